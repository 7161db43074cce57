"""Bad input stops with a clear message naming the file and line, or the option."""

import pytest

from robustag.datasets import DATASETS, load_assignments, resolve_source
from robustag.errors import DataFormatError, ParameterError, RobustagError
from robustag.preprocess import SplitOptions, load_split
from robustag.training import default_config, resolve_device


def _write(path, text, encoding="utf-8"):
    path.write_bytes(text.encode(encoding))
    return path


def test_missing_file_names_the_path_and_the_fix(tmp_path):
    with pytest.raises(RobustagError, match=r"file not found: .*user_taggedartists-timestamps\.dat.*data download lastfm"):
        load_split("lastfm", tmp_path)


def test_wrong_column_count_names_file_and_line(tmp_path):
    path = _write(tmp_path / "bad.tsv", "u1\ti1\tt1\t1\nu2\ti2\tt2\t2\nu3\ti3\tt3\t3\textra\n")
    with pytest.raises(DataFormatError, match=r"bad\.tsv, line 3: expected 4 columns .* found 5"):
        load_assignments(resolve_source(f"tsv:{path}"), tmp_path)


def test_hetrec_file_with_three_columns_is_rejected(tmp_path):
    folder = tmp_path / DATASETS["movielens"].folder
    folder.mkdir()
    _write(folder / DATASETS["movielens"].filename, "userID\tmovieID\ttagID\tunixTimeStamp\n1\t2\t3\n")
    with pytest.raises(DataFormatError, match=r"line 2: expected 4 columns"):
        load_split("movielens", tmp_path)


def test_unparseable_timestamp_names_file_and_line(tmp_path):
    path = _write(tmp_path / "bad.tsv", "user\titem\ttag\ttime\nu1\ti1\tt1\t1\nu2\ti2\tt2\tyesterday\n")
    with pytest.raises(DataFormatError, match=r"bad\.tsv, line 3: timestamp 'yesterday' is not a number"):
        load_assignments(resolve_source(f"tsv:{path}"), tmp_path)


def test_empty_field_names_file_and_line(tmp_path):
    path = _write(tmp_path / "bad.tsv", "u1\ti1\tt1\nu2\t\tt2\n")
    with pytest.raises(DataFormatError, match=r"bad\.tsv, line 2: empty item field"):
        load_assignments(resolve_source(f"tsv:{path}"), tmp_path)


def test_empty_file(tmp_path):
    path = _write(tmp_path / "empty.tsv", "\n\n")
    with pytest.raises(DataFormatError, match=r"empty\.tsv: the file is empty"):
        load_assignments(resolve_source(f"tsv:{path}"), tmp_path)


def test_empty_after_p_core_names_the_option(tmp_path):
    path = _write(tmp_path / "small.tsv", "u1\ti1\tt1\nu2\ti2\tt2\n")
    with pytest.raises(RobustagError, match=r"nothing is left after the 10-core filter .*--p-core"):
        load_split(f"tsv:{path}", tmp_path, SplitOptions(p_core=10))


def test_unknown_dataset_lists_the_known_ones():
    with pytest.raises(RobustagError, match=r"unknown dataset 'nope'.*lastfm.*movielens.*tsv:PATH"):
        resolve_source("nope")


def test_latin1_tags_and_crlf_line_ends_are_read(tmp_path):
    # A three-column file without header, Latin-1 tags, CRLF line ends (as in the GroupLens zips).
    path = _write(tmp_path / "latin.tsv", "u1\ti1\tfu\xdfball\r\nu1\ti2\ttropic\xe1lia\r\n", encoding="latin-1")
    raw = load_assignments(resolve_source(f"tsv:{path}"), tmp_path)
    assert list(raw.tags) == ["fu\xdfball", "tropic\xe1lia"]
    assert list(raw.timestamps) == [0.0, 1.0]  # no timestamps: file order


def test_delicious_layout_is_parsed(tmp_path):
    source = DATASETS["delicious"]
    folder = tmp_path / source.folder
    folder.mkdir()
    rows = ["userID\tbookmarkID\ttagID\ttimestamp"]
    rows += [f"{u}\t{b}\t{t}\t{1289255362000 + 1000 * b}" for u in range(8) for b in range(6) for t in range(3)]
    _write(folder / source.filename, "\r\n".join(rows) + "\r\n")
    split = load_split("delicious", tmp_path, SplitOptions(p_core=2))
    stats = split.stats()
    assert (stats["users"], stats["items"], stats["tags"], stats["raw_assignments"]) == (8, 6, 3, 144)
    assert stats["test_posts"] == 8


@pytest.mark.parametrize("option, value", [("dim", 0), ("lr", -1.0), ("epochs", 0), ("negatives", 0)])
def test_bad_shared_training_options_name_the_option(option, value):
    with pytest.raises(ParameterError, match=rf"^{option}: invalid value") as raised:
        default_config("metric", **{option: value})
    assert raised.value.parameter == option  # the command line shows it as --{option}


@pytest.mark.parametrize("model, option, value, message", [
    ("metric", "norm", "sphere", "metric: parameter norm='sphere' must be one of clip, reg, none"),
    ("pop-mix", "mix", 1.5, r"pop-mix: parameter mix=1.5 must be in \[0, 1\]"),
    ("pitf", "margin", 1.0, "^margin: model pitf has no such parameter .its parameters: reg."),
    ("metric:margin=-1", None, None, "metric: parameter margin=-1.0 must be ≥ 0"),
])
def test_bad_model_parameters_name_the_model_and_parameter(model, option, value, message):
    with pytest.raises(RobustagError, match=message):
        default_config(model, **({option: value} if option else {}))


def test_an_unknown_model_lists_the_known_ones():
    with pytest.raises(RobustagError, match="unknown model 'bogus'; available: fm, metric, pitf, pop"):
        default_config("bogus")


def test_bad_device_is_rejected():
    with pytest.raises(ParameterError, match="^device: expected auto, cpu, cuda or cuda:N, got 'tpu'"):
        resolve_device("tpu")


def test_spec_poison_valid_must_be_a_boolean(tmp_path):
    from robustag.spec import load_specs

    path = tmp_path / "spec.toml"
    path.write_text('name = "x"\npoison_valid = "yes"\n')
    with pytest.raises(RobustagError, match=r"spec .*spec.toml: poison_valid must be true or false, got 'yes'"):
        load_specs(path)
    path.write_text('name = "x"\npoison_valid = true\n')
    assert load_specs(path)[0].poison_valid is True
