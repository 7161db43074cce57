"""The release number, and the computation version that keys what robustag computes.

A release that changes no number (a faster kernel, a new report, a new plugin) must not make
every run folder recompute, so unit keys carry `COMPUTATION`, not the release: it names the
release whose computation the units of this version reproduce, and is raised, deliberately and
to that release's number, only where a release changes what a unit or cell computes (its done
cells then stay in the folder, superseded in reports by the recomputed ones)."""

__version__ = "0.2.3"
COMPUTATION = "0.2.3"
