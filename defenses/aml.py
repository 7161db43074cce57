"""aml: adversarial training at a fixed strength, L = L_model + β·mean ℓ(Δ*) (AML / APR)."""

from robustag.defense import AdversarialDefense


class AML(AdversarialDefense):
    name = "aml"
    summary = "adversarial metric learning: L + β·mean adversarial loss, fixed attack strength"
    stacks = True

    def loss(self, model, batch):
        embeddings = model.embed(batch)
        clean = model.clean_loss(embeddings)
        adversarial = self.adversarial_losses(model, embeddings).mean()
        return clean + self.beta * adversarial, {"loss": clean.detach(), "adv_loss": adversarial.detach()}
