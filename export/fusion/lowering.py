"""Replace every ai.ln2d::LayerNorm2d placeholder with the standard-op form chosen for it."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from onnxscript.rewriter import pattern

from export.fusion.forms import FORMS
from export.fusion.patterns import DOMAIN, new_initializer

FormByName = Callable[[str], str]  # site name -> form name


class Lower(pattern.RewriteRuleClassBase):
    def __init__(self, choose: FormByName) -> None:
        super().__init__()
        self._choose = choose

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
        if scale is None:  # LayerNormalization needs a scale: ones of C elements, x's dtype
            ones = np.ones(x.shape[1], dtype=x.dtype.numpy())
            scale = new_initializer(op, ones, "scale")
        bias = inputs[2] if len(inputs) > 2 else None
        form = FORMS[self._choose(node.attributes["site"].as_string())]
        return form(op, x, scale, bias, node.attributes["epsilon"].as_float())


def lowering_rules(choose: FormByName) -> pattern.RewriteRuleSet:
    return pattern.RewriteRuleSet([Lower.rule(choose)])
