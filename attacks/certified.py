"""certified: not an attack but the floor under all of them — the certified lower bound of
every metric under this budget (`robustag.certify`), for models affine in the user and item
rows (metric, PITF, FM). In a benchmark it is a column like an attack's: the robustness a
model is guaranteed, to read beside what the attacks found (the truth lies between)."""

from robustag.attack import Bound, EmbeddingAttack, Param, PluginError
from robustag.certify import certify


class Certified(Bound):
    name = "certified"
    summary = "the certified lower bound under this budget (a floor no attack goes under; metric, pitf, fm)"
    params = {**EmbeddingAttack.params,
              "joint": Param(True, "one perturbation for all of a post's true tags (robustag.certify); false: "
                                   "each true tag bounded on its own (looser)")}

    def validate(self):
        super().validate()
        if "tag" in self.target_tables:
            raise PluginError("certified: perturbed tag tables have no certificate; use targets=user+item")

    def bound(self, model, posts, n_tags, device) -> dict:
        return certify(model, posts, n_tags, self.eps, self.norm, self.targets, device, joint=self.joint)
