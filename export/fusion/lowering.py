"""Replace every ln2d.fusion::LayerNorm2d placeholder with the form chosen for it."""

from __future__ import annotations

from collections.abc import Callable

from onnxscript.rewriter import pattern

from ln2d.export.fusion.forms import FORMS
from ln2d.export.fusion.patterns import DOMAIN

FormByName = Callable[[str], str]  # site name -> form name


class Lower(pattern.RewriteRuleClassBase):
    def __init__(self, choose: FormByName, opset: int) -> None:
        super().__init__()
        self._choose = choose
        self._opset = opset

    def pattern(self, op, x):
        return op.LayerNorm2d(
            x,
            _domain=DOMAIN,
            _allow_other_inputs=True,
            _allow_other_attributes=True,
            _outputs=["norm"],
        )

    def rewrite(self, op, x, norm, **_):
        node = norm.producer()
        inputs = list(node.inputs)
        scale = inputs[1] if len(inputs) > 1 else None
        bias = inputs[2] if len(inputs) > 2 else None
        form = FORMS[self._choose(node.attributes["site"].as_string())]
        return form(op, x, scale, bias, node.attributes["epsilon"].as_float(), self._opset)


def lowering_rules(choose: FormByName, opset: int) -> pattern.RewriteRuleSet:
    return pattern.RewriteRuleSet([Lower.rule(choose, opset)])
