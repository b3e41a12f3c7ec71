"""Every name a user can call a layer by, and the one node of the BN-folded model it means.

Why: suite keys, ``calibrate --set`` overrides and imported tables name layers by string, and a string
that names nothing used to do nothing: ``float_layers = ["no_such_layer"]`` quantised every layer and the
ncnn table gained a ``#no_such_layer`` line. Every user-given layer name goes through :class:`LayerNames`,
which either resolves it or raises an error listing the closest names the model really has.

What resolves, in this order:
    * a node name (a node without a name is called by its first output, as ncnn tables call it);
    * a tensor name, meaning the node that produces it (layer reports and remedies name tensors, and
      tpu-mlir names an op after its output);
    * the name of a BatchNormalization node (or its input tensor) that folding merged into the Conv/Gemm
      before it: that Conv/Gemm, because the deployed graph has no separate BN layer to keep in float.
A graph input or a weight is no layer; the error says which layer reads it instead.

Closest names are the model's names that contain the given one (users paste a tail such as ``Conv_403``),
those the given one contains, and :func:`difflib.get_close_matches` on node and tensor names,
case-insensitively.
"""

from __future__ import annotations

import difflib
import logging
import re
from collections.abc import Callable, Iterable

import onnx

from harness.errors import ConfigError, HarnessError
from harness.model.graph import node_display_name, topological_nodes

log = logging.getLogger(__name__)
_MAX_SUGGESTIONS = 5
_FOLDABLE = ("Conv", "Gemm")


class LayerNames:
    """The node and tensor names of a BN-folded model (``folded``), plus what folding removed from
    ``original`` (the model as loaded). ``model`` names the model in messages (``"model.onnx"``).
    ``layers``: the compared tensors (what ``[gates.layer_overrides]`` patterns must match); default: every
    node output."""

    def __init__(self, folded: onnx.ModelProto, *, original: onnx.ModelProto | None = None,
                 model: str = "the model", layers: Iterable[str] | None = None) -> None:
        self.model = model
        graph = folded.graph
        self.nodes: dict[str, onnx.NodeProto] = {node_display_name(n): n for n in topological_nodes(graph)}
        self.producer: dict[str, str] = {out: name for name, n in self.nodes.items() for out in n.output if out}
        self.consumers: dict[str, list[str]] = {}
        for name, n in self.nodes.items():
            for inp in n.input:
                self.consumers.setdefault(inp, []).append(name)
        self.inputs = [i.name for i in graph.input]
        self.weights = {t.name for t in graph.initializer}
        self.layers: dict[str, None] = dict.fromkeys(layers if layers is not None else self.producer)
        # BN nodes (and their input tensors) that folding removed: name -> the node that absorbed them
        self.folded_into: dict[str, str] = {}
        for n in (original.graph.node if original is not None else ()):
            name = node_display_name(n)
            if n.op_type == "BatchNormalization" and name not in self.nodes and n.output and n.output[0] in self.producer:
                into = self.producer[n.output[0]]
                if self.nodes[into].op_type in _FOLDABLE:
                    self.folded_into[name] = into
                    self.folded_into.setdefault(n.input[0], into)
        self._candidates = list(dict.fromkeys([*self.nodes, *self.producer, *self.folded_into]))

    @classmethod
    def of(cls, proto: onnx.ModelProto, *, model: str = "the model") -> LayerNames:
        """The names of ``proto`` as the quantiser sees it (BN folded here)."""
        from harness.quant.fold import fold_batchnorm  # quant depends on model, not the other way round

        return cls(fold_batchnorm(proto)[0], original=proto, model=model)

    # --- layer names -------------------------------------------------------------------------------
    def lookup(self, name: str) -> str | None:
        """The node ``name`` means, or None when it names no layer."""
        if name in self.nodes:
            return name
        if name in self.producer:
            return self.producer[name]
        return self.folded_into.get(name)

    def resolve(self, names: Iterable[str], *, where: str,
                error: type[HarnessError] = ConfigError) -> frozenset[str]:
        """Node names for ``names`` (a key such as ``"[quant] float_layers (suite.toml)"`` in ``where``);
        one error naming every unknown name and the closest names for each."""
        out, unknown = set(), []
        for name in names:
            node = self.lookup(name)
            if node is None:
                unknown.append(name)
                continue
            if node != name:
                how = (f"was folded into {self.nodes[node].op_type} {node!r}" if name in self.folded_into
                       else f"is the output of {self.nodes[node].op_type} {node!r}")
                log.info("%s: %r %s; using %r", where, name, how, node)
            out.add(node)
        if unknown:
            raise self.unknown_error(unknown, where=where, error=error)
        return frozenset(out)

    def unknown_error(self, unknown: list[str], *, where: str, error: type[HarnessError] = ConfigError,
                      expected: str | None = None, nodes_only: bool = False) -> HarnessError:
        """"Got layer name 'X' in <where>. Expected a node or tensor name of <model>. Try: ..." for every
        name of ``unknown`` (the first few, when a table names many). ``nodes_only``: where only node names
        are valid (ncnn table lines), a tensor name gets its producer as the hint."""
        shown = unknown[:_MAX_SUGGESTIONS]
        more = f" (and {len(unknown) - len(shown)} more)" if len(unknown) > len(shown) else ""
        what = (f"Got layer name {shown[0]!r} in {where}" if len(unknown) == 1 else
                f"Got {len(unknown)} unknown layer names {', '.join(map(repr, shown))}{more} in {where}")
        hints = [self._hint(name, nodes_only=nodes_only) for name in shown]
        remedy = hints[0] if len(hints) == 1 else "; ".join(f"for {n!r}: {h}" for n, h in zip(shown, hints))
        default = f"a {'node' if nodes_only else 'node or tensor'} name of {self.model}"
        return error(what, expected=expected or default, remedy=remedy)

    def _hint(self, name: str, *, nodes_only: bool = False) -> str:
        if name in self.inputs or name in self.weights:
            readers = sorted(set(self.consumers.get(name, [])))
            kind = "the model input" if name in self.inputs else "a weight"
            return f"{name!r} is {kind}, not a layer; name the layer that reads it: {_quoted(readers)}"
        node = self.lookup(name) if nodes_only else None
        if node is not None:
            return f"{name!r} is a tensor, not a node; its layer is {node!r}"
        candidates = list(self.nodes) if nodes_only else self._candidates
        return _closest_text(self.closest(name, candidates), self._first_layers())

    def _first_layers(self) -> list[str]:
        """What to show when nothing is close: the first nodes that compute (not Constant nodes)."""
        return [name for name, n in self.nodes.items() if n.op_type != "Constant"][:3]

    # --- tensor patterns ([gates.layer_overrides]) --------------------------------------------------
    def check_pattern(self, pattern: str, *, is_glob: bool, matches: Callable[[str], bool], where: str) -> None:
        """Refuse an override key that matches no compared tensor (exact name or glob)."""
        if any(matches(t) for t in self.layers):
            return
        candidates = list(self.layers)
        via_nodes = [self.compared_output(n) for n in self.nodes if matches(n)]
        via_nodes += [self.compared_output(t) for t in self.producer if matches(t)]
        suggestions = list(dict.fromkeys(t for t in via_nodes if t is not None))
        if suggestions:
            remedy = (f"overrides name compared tensors, not nodes or fused-away tensors; "
                      f"the tensor(s) of what it names: {_quoted(suggestions)}")
        elif is_glob:
            remedy = _closest_text(_closest_to_glob(pattern, candidates), candidates[:3])
        else:
            remedy = _closest_text(self.closest(pattern, candidates), candidates[:3])
        what = "matches no layer" if is_glob else "names no compared tensor"
        raise ConfigError(f"Got {where}, which {what} of {self.model}",
                          expected="an exact tensor name or glob of the layerwise table (tensor names)", remedy=remedy)

    def compared_output(self, name: str) -> str | None:
        """The compared tensor a node (or tensor) ends up as: its output, or, when a toolchain fuses that
        output into the activation that reads it, the activation's output."""
        node = self.lookup(name)
        if node is None:
            return None
        tensor = self.nodes[node].output[0] if name in self.nodes or name in self.folded_into else name
        for _ in range(4):  # Conv -> Relu chains are one step; never loop on odd graphs
            if tensor in self.layers:
                return tensor
            readers = self.consumers.get(tensor, [])
            if len(readers) != 1 or not self.nodes[readers[0]].output:
                return None
            tensor = self.nodes[readers[0]].output[0]
        return None

    # --- suggestions -------------------------------------------------------------------------------
    @staticmethod
    def closest(name: str, candidates: list[str]) -> list[str]:
        """Names containing ``name`` (shortest first), then difflib's closest, case-insensitively."""
        low = name.lower()
        lowered = [c.lower() for c in candidates]
        by_low: dict[str, str] = {}
        for c, lc in zip(candidates, lowered):
            by_low.setdefault(lc, c)
        same = [c for c, lc in zip(candidates, lowered) if lc == low]
        contains = sorted((c for c, lc in zip(candidates, lowered) if low and low in lc and lc != low), key=len)
        # and the other way round (a suffix typed after the name): longest first, at least two letters
        inside = sorted((c for c, lc in zip(candidates, lowered) if len(lc) >= 2 and lc in low and lc != low),
                        key=len, reverse=True)
        fuzzy = [by_low[m] for m in difflib.get_close_matches(low, list(by_low), n=_MAX_SUGGESTIONS, cutoff=0.6)]
        return list(dict.fromkeys([*same, *contains, *inside, *fuzzy]))[:_MAX_SUGGESTIONS]


def _quoted(names: Iterable[str]) -> str:
    return ", ".join(repr(n) for n in names)


def _closest_to_glob(pattern: str, candidates: list[str]) -> list[str]:
    """Tensors sharing the most of the pattern's literal parts (longest common run of each part, as a
    share of all literal text; ties in topological order). difflib's whole-string ratio suits single names,
    not a path where a ``*`` stands for half of it."""
    parts = [p.lower() for p in re.split(r"[*?]|\[[^\]]*\]", pattern) if p]
    total = sum(map(len, parts))
    if not total:
        return []

    def share(candidate: str) -> float:
        low = candidate.lower()
        return sum(difflib.SequenceMatcher(None, p, low, autojunk=False)
                   .find_longest_match(0, len(p), 0, len(low)).size for p in parts) / total

    scored = sorted((-share(c), i) for i, c in enumerate(candidates))
    return [candidates[i] for neg, i in scored[:_MAX_SUGGESTIONS] if -neg >= 0.6]


def _closest_text(close: list[str], first: list[str]) -> str:
    if close:
        return f"one of {_quoted(close)} (closest names)"
    return (f"check the spelling against the model's names (none is close; the first are {_quoted(first)})"
            if first else "check the model: it has no layers")
