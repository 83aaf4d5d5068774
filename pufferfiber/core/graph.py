"""The layer graph of a policy and the registry of layer kinds.

This module is the one place that knows the network's wiring (in the spirit of Torch-Pruning's
DepGraph and its per-type pruners). Everything that edits units (fibers, collapse, symmetry
breaking, ReDo, the data criterion) asks it instead of indexing ``policy.network[7]``, so a
collapsed policy (smaller sizes), the MLP policy (different Sequential layout) or a GRU in place
of the LSTM is handled by the same code.

A *node* is a layer whose units can be grouped: a conv layer (unit = output channel), a Linear
layer (unit = neuron), the recurrent layer (LSTM or GRU; unit = hidden unit, owning one row per
gate), or a head (actor, critic; its units are outputs and are never collapsed). Each node knows
its producer (the node whose units are its inputs, ``None`` for the observation) and how its
input index maps to producer units: ``identity`` (input k is producer unit k) or ``flatten`` at
the conv → Linear boundary (input k is channel ``k // P`` at position ``k % P``, ``P = H·W``).

Layer kinds. Every node has a :class:`Kind`, and :data:`KINDS` maps each kind to one
:class:`LayerKind` object that owns everything kind-specific: building the node from its module,
the unit views and their inverse, how the biases combine in a unit's row, whether fold factors
apply (the collapse's fold rule), the :class:`Architecture` field holding its
sizes, and how its activity is read from a forward pass. Code outside this registry asks the
node's kind (``node.spec``) instead of branching on ``kind == ...``. Adding a layer type means
adding one kind here and its module in the policy.

Unit views. Every weight tensor is handled through one canonical 4-d *unit view*
``[units, gates, inputs, extent]``:

* conv ``[out, in, kh, kw]`` → ``[out, 1, in, kh·kw]`` (extent = kernel positions);
* Linear ``[out, in]`` → ``[out, 1, in, 1]``, or ``[out, 1, C, P]`` after a flatten;
* recurrent ``W_ih [g·n, in]`` / ``W_hh [g·n, n]`` → ``[n, g, in, 1]`` / ``[n, g, n, 1]``
  (LSTM: g = 4 gates i, f, g, o; GRU: g = 3 gates r, z, n);
* biases → ``[units, gates]``.

The views are real torch views (no copy) of contiguous tensors, so writing into them edits the
parameter. Axis 0 of a node's own tensors indexes its units (incoming rows); axis 2 of a
consumer's weight view indexes the producer's units (outgoing columns). The same views apply
to anything shaped like the parameter, e.g. Adam's moment tensors, which is what symmetry
breaking needs to reset exactly the entries it edited.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar

import torch
from torch import nn

from pufferfiber.core.policy import Architecture, Policy


class Kind(StrEnum):
    """What a node is (its value is what ``fibers.pkl`` stores under ``kind``)."""

    CONV = "conv"
    LINEAR = "linear"
    LSTM = "lstm"
    GRU = "gru"
    HEAD = "head"


class Role(StrEnum):
    """Which side of a tensor a :class:`UnitAxis` addresses."""

    WEIGHT = "weight"  # the node's incoming weight rows (axis 0)
    BIAS = "bias"  # the node's bias entries (axis 0)
    RECURRENT = "recurrent"  # the node's own W_hh rows (axis 0)
    OUT = "out"  # a consumer's weight columns reading the node (axis 2)
    RECURRENT_OUT = "recurrent_out"  # W_hh columns reading the node's own units (axis 2)


class InputMap(StrEnum):
    """How a node's input index maps to its producer's units."""

    IDENTITY = "identity"
    FLATTEN = "flatten"


class Activation(StrEnum):
    """What follows a node's pre-activation."""

    RELU = "relu"  # positively homogeneous: positive multiples fold exactly
    GATES = "gates"  # sigmoid/tanh gates of a recurrent layer: only duplicates fold
    NONE = "none"  # heads


@dataclass(frozen=True)
class LayerNode:
    """One layer of the graph.

    Attributes:
        name: module path from ``named_modules()``, e.g. ``"policy.policy.network.7"``.
        label: short name: ``conv1``.., ``linear1``.., ``lstm`` / ``gru``, ``actor``, ``value``.
        kind: the layer's :class:`Kind`.
        size: number of units (out channels, neurons, hidden units, outputs).
        activation: the :class:`Activation` after the layer.
        producer: name of the node feeding this one, ``None`` for the observation.
        mapping: how an input index maps to producer units (:class:`InputMap`).
        in_units: number of producer units (or observation channels / features).
        extent: entries per (unit, input unit): kernel positions for conv, ``H·W`` after a
            flatten, 1 otherwise.
        gates: rows per unit: 4 for the LSTM, 3 for the GRU, 1 otherwise.
        weight_key: state-dict key of the incoming weight (``W_ih`` for a recurrent layer).
        bias_keys: state-dict keys of the bias(es) (a recurrent layer has ``b_ih`` and ``b_hh``).
        recurrent_key: ``W_hh`` for a recurrent layer, else ``None``.
        kernel: conv kernel ``(kh, kw)``; ``None`` otherwise.
    """

    name: str
    label: str
    kind: Kind
    size: int
    activation: Activation
    producer: str | None
    mapping: InputMap
    in_units: int
    extent: int
    gates: int
    weight_key: str
    bias_keys: tuple[str, ...]
    recurrent_key: str | None = None
    kernel: tuple[int, int] | None = None

    @property
    def spec(self) -> LayerKind:
        """The :class:`LayerKind` that owns this node's rules."""
        return KINDS[self.kind]

    @property
    def hidden(self) -> bool:
        """True for collapsible layers (conv, Linear, recurrent), False for heads."""
        return self.spec.hidden

    @property
    def recurrent(self) -> bool:
        """True for a layer that reads its own units (LSTM, GRU)."""
        return self.recurrent_key is not None


@dataclass(frozen=True)
class UnitAxis:
    """A tensor slot whose unit view has one axis indexed by a node's units.

    ``key`` is the state-dict key, ``role`` the :class:`Role` (incoming side, axis 0, or a
    consumer's columns, axis 2), and ``owner`` the node the tensor belongs to.
    """

    key: str
    role: Role
    owner: LayerNode

    @property
    def axis(self) -> int:
        return 2 if self.role in (Role.OUT, Role.RECURRENT_OUT) else 0


# --------------------------------------------------------------------------- layer kinds


class LayerKind:
    """The rules of one kind of layer (subclasses per module type; one instance in KINDS)."""

    kind: ClassVar[Kind]
    module_type: ClassVar[type[nn.Module]]
    activation: ClassVar[Activation] = Activation.RELU
    hidden: ClassVar[bool] = True
    # Architecture field holding the sizes of the layers of this kind (None: not resizable).
    arch_field: ClassVar[str | None] = None
    gates: ClassVar[int] = 1

    @property
    def homogeneous(self) -> bool:
        """True when positive multiples of a row are one signal (ReLU): the collapse then folds
        each member's factor into the outgoing columns; otherwise only duplicates fold."""
        return self.activation == Activation.RELU

    # -- unit views
    def weight_view(self, node: LayerNode, weight: torch.Tensor) -> torch.Tensor:
        """The incoming weight as ``[units, gates, in_units, extent]`` (a view)."""
        return weight.view(node.size, 1, node.in_units, node.extent)

    def unview_weight(self, node: LayerNode, view: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`weight_view` for a view with any unit / input counts."""
        units, _, inputs, extent = view.shape
        return view.reshape(units, inputs * extent)

    def recurrent_view(self, node: LayerNode, weight_hh: torch.Tensor) -> torch.Tensor:
        raise ValueError(f"{node.label} has no recurrent weights")

    def bias_view(self, node: LayerNode, bias: torch.Tensor) -> torch.Tensor:
        """A bias as ``[units, gates]`` (a view)."""
        return bias.view(node.gates, node.size).transpose(0, 1)

    def unview_bias(self, view: torch.Tensor) -> torch.Tensor:
        return view.transpose(0, 1).reshape(-1)

    # -- rows
    def combined_bias(self, node: LayerNode, params: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``[units, gates, k]`` float64: the bias entries of a unit's row, combined the way the
        layer uses them (one bias: ``k = 1``)."""
        bias = sum(self.bias_view(node, params[k]).double() for k in node.bias_keys)
        return torch.as_tensor(bias).unsqueeze(-1)

    def shift_bias_key(self, node: LayerNode, weight_key: str) -> str:
        """The bias that absorbs a constant input seen through ``weight_key`` (data fold)."""
        return node.bias_keys[-1]

    # -- activity
    def unit_outputs(self, output: Any) -> torch.Tensor:
        """The units' outputs from the module's forward output, unit axis 1 (after the ReLU)."""
        return torch.relu(output)

    def unit_samples(self, outputs: torch.Tensor, size: int) -> torch.Tensor:
        """``[samples, units]``: one row per frame (and image position, for conv channels)."""
        return outputs.reshape(-1, size)

    def activity(self, output: Any) -> torch.Tensor:
        """Mean |activation| per unit from the module's forward output (ReDo)."""
        act = self.unit_outputs(output)
        dims = [d for d in range(act.dim()) if d != 1]
        return act.abs().mean(dim=dims)

    # -- construction
    def parameter_keys(self, name: str) -> tuple[str, tuple[str, ...], str | None]:
        """``(weight, biases, recurrent weight)`` state-dict keys of the module at ``name``."""
        return f"{name}.weight", (f"{name}.bias",), None

    def shape(self, module: Any, name: str, producer: LayerNode | None, in_units: int) -> Shape:
        """The node's sizes read from its module; ``in_units`` counts the observation's
        channels / features when there is no producer."""
        raise NotImplementedError

    def node(
        self, module: nn.Module, name: str, label: str, producer: LayerNode | None, in_units: int
    ) -> LayerNode:
        """The node of ``module`` (at ``name`` in ``named_modules()``), read by ``producer``'s
        units (``None``: the observation)."""
        if not isinstance(module, self.module_type):
            raise ValueError(f"{name}: a {self.kind} layer needs {self.module_type.__name__}")
        weight_key, bias_keys, recurrent_key = self.parameter_keys(name)
        shape = self.shape(module, name, producer, in_units)
        return LayerNode(
            name=name,
            label=label,
            kind=self.kind,
            size=shape.size,
            activation=self.activation,
            producer=None if producer is None else producer.name,
            mapping=shape.mapping,
            in_units=shape.in_units,
            extent=shape.extent,
            gates=self.gates,
            weight_key=weight_key,
            bias_keys=bias_keys,
            recurrent_key=recurrent_key,
            kernel=shape.kernel,
        )


@dataclass(frozen=True)
class Shape:
    """A node's sizes (see :class:`LayerNode`)."""

    size: int
    in_units: int
    mapping: InputMap = InputMap.IDENTITY
    extent: int = 1
    kernel: tuple[int, int] | None = None


class ConvKind(LayerKind):
    kind = Kind.CONV
    module_type = nn.Conv2d
    arch_field = "channels"

    def shape(self, module: Any, name: str, producer: LayerNode | None, in_units: int) -> Shape:
        kh, kw = module.kernel_size
        n_in = producer.size if producer is not None else in_units
        return Shape(module.out_channels, n_in, extent=kh * kw, kernel=(kh, kw))

    def unview_weight(self, node: LayerNode, view: torch.Tensor) -> torch.Tensor:
        units, _, inputs, _ = view.shape
        return view.reshape(units, inputs, *(node.kernel or (1, 1)))

    def unit_samples(self, outputs: torch.Tensor, size: int) -> torch.Tensor:
        return outputs.transpose(1, -1).reshape(-1, size)  # channels last, positions pooled


class LinearKind(LayerKind):
    kind = Kind.LINEAR
    module_type = nn.Linear
    arch_field: ClassVar[str | None] = "hidden"

    def shape(self, module: Any, name: str, producer: LayerNode | None, in_units: int) -> Shape:
        if producer is None:
            return Shape(module.out_features, module.in_features)
        if module.in_features == producer.size:
            return Shape(module.out_features, producer.size)
        if producer.kernel is not None and module.in_features % producer.size == 0:
            # conv → flatten → Linear: input k is (channel k // P, position k % P).
            extent = module.in_features // producer.size
            return Shape(module.out_features, producer.size, InputMap.FLATTEN, extent)
        raise ValueError(
            f"{name}: {module.in_features} inputs do not match the {producer.size} units of "
            f"{producer.label}"
        )


class HeadKind(LinearKind):
    kind = Kind.HEAD
    activation = Activation.NONE
    hidden = False
    arch_field = None


class RecurrentKind(LayerKind):
    """A one-layer, unidirectional torch RNN with gate-major rows (``W_ih``, ``W_hh``)."""

    activation = Activation.GATES
    arch_field = "lstm"  # Architecture.lstm is the width of the recurrent layer, LSTM or GRU
    # Gates whose two biases act separately (the GRU's candidate gate: b_hn is multiplied by r).
    separate_bias_gates: ClassVar[tuple[int, ...]] = ()

    def weight_view(self, node: LayerNode, weight: torch.Tensor) -> torch.Tensor:
        # Rows are gate-major: row g·n + u belongs to unit u.
        return weight.view(node.gates, node.size, node.in_units, node.extent).transpose(0, 1)

    def unview_weight(self, node: LayerNode, view: torch.Tensor) -> torch.Tensor:
        units, gates, inputs, extent = view.shape
        return view.transpose(0, 1).reshape(gates * units, inputs * extent)

    def recurrent_view(self, node: LayerNode, weight_hh: torch.Tensor) -> torch.Tensor:
        """``W_hh`` as ``[units, gates, units, 1]`` (a view)."""
        n = node.size
        return weight_hh.view(node.gates, n, n, 1).transpose(0, 1)

    def combined_bias(self, node: LayerNode, params: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if not self.separate_bias_gates:  # only b_ih + b_hh matters
            return super().combined_bias(node, params)
        b_ih, b_hh = (self.bias_view(node, params[k]).double() for k in node.bias_keys)
        outside, inside = b_ih + b_hh, torch.zeros_like(b_hh)
        for g in self.separate_bias_gates:
            outside[:, g], inside[:, g] = b_ih[:, g], b_hh[:, g]
        return torch.stack([outside, inside], dim=-1)

    def shape(self, module: Any, name: str, producer: LayerNode | None, in_units: int) -> Shape:
        if module.num_layers != 1 or module.bidirectional or getattr(module, "proj_size", False):
            raise ValueError(f"{name}: only a one-layer, unidirectional {self.kind} is supported")
        return Shape(module.hidden_size, producer.size if producer is not None else in_units)

    def unit_outputs(self, output: Any) -> torch.Tensor:
        out = output[0]  # [T, B, H]: h at every step
        return out.reshape(-1, out.shape[-1])

    def parameter_keys(self, name: str) -> tuple[str, tuple[str, ...], str | None]:
        return (
            f"{name}.weight_ih_l0",
            (f"{name}.bias_ih_l0", f"{name}.bias_hh_l0"),
            f"{name}.weight_hh_l0",
        )


class LSTMKind(RecurrentKind):
    kind = Kind.LSTM
    module_type = nn.LSTM
    gates = 4  # i, f, g, o


class GRUKind(RecurrentKind):
    kind = Kind.GRU
    module_type = nn.GRU
    gates = 3  # r, z, n
    separate_bias_gates = (2,)  # n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn))

    def shift_bias_key(self, node: LayerNode, weight_key: str) -> str:
        # A constant seen through W_hh belongs inside r ⊙ (...), through W_ih outside it.
        return node.bias_keys[0 if weight_key == node.weight_key else 1]


KINDS: dict[Kind, LayerKind] = {
    k.kind: k for k in (ConvKind(), LinearKind(), LSTMKind(), GRUKind(), HeadKind())
}
HIDDEN_KINDS = tuple(k for k, spec in KINDS.items() if spec.hidden)
RECURRENT_KINDS = tuple(k for k, spec in KINDS.items() if isinstance(spec, RecurrentKind))
LSTM_GATES = KINDS[Kind.LSTM].gates


# --------------------------------------------------------------------------- the graph


class LayerGraph:
    """Nodes in forward order plus producer/consumer links, derived from a :class:`Policy`."""

    def __init__(self, nodes: list[LayerNode]) -> None:
        self.nodes = nodes
        self._by_name = {n.name: n for n in nodes}
        self._by_label = {n.label: n for n in nodes}

    def __iter__(self) -> Iterator[LayerNode]:
        return iter(self.nodes)

    def __getitem__(self, key: str) -> LayerNode:
        """A node by name (``policy.policy.network.7``) or label (``linear1``)."""
        node = self._by_name.get(key) or self._by_label.get(key)
        if node is None:
            raise KeyError(f"no layer {key!r}; layers: {', '.join(n.label for n in self.nodes)}")
        return node

    @property
    def hidden(self) -> list[LayerNode]:
        """Collapsible nodes (conv, Linear, recurrent) in forward order."""
        return [n for n in self.nodes if n.hidden]

    @property
    def heads(self) -> list[LayerNode]:
        return [n for n in self.nodes if not n.hidden]

    def select_hidden(self, layers: Sequence[str] | None) -> list[LayerNode]:
        """Hidden nodes named by ``layers`` (names, labels or kinds such as ``conv``,
        ``linear``, ``lstm``), in forward order; ``None`` = all. Unknown names and heads are a
        ValueError."""
        if layers is None:
            return self.hidden
        chosen: set[str] = set()
        for key in layers:
            by_kind = [n.name for n in self.hidden if n.kind == key]
            node = self._by_name.get(key) or self._by_label.get(key)
            if by_kind:
                chosen.update(by_kind)
            elif node is None:
                valid = ", ".join(n.label for n in self.hidden)
                kinds = ", ".join(k for k in HIDDEN_KINDS if any(n.kind == k for n in self.hidden))
                what = (
                    f"no {key} layer in this policy" if key in HIDDEN_KINDS else f"no layer {key!r}"
                )
                raise ValueError(f"{what}; choose from {valid}, or the kinds {kinds}")
            elif not node.hidden:
                raise ValueError(f"layer {key!r} is a head; only hidden layers can be chosen")
            else:
                chosen.add(node.name)
        return [n for n in self.hidden if n.name in chosen]

    def producer(self, node: LayerNode) -> LayerNode | None:
        return None if node.producer is None else self._by_name[node.producer]

    def consumers(self, node: LayerNode) -> list[LayerNode]:
        """Nodes that read this node's units (a recurrent layer's own recurrence not listed)."""
        return [n for n in self.nodes if n.producer == node.name]

    def incoming_axes(self, node: LayerNode) -> list[UnitAxis]:
        """Tensors holding the node's incoming rows: weight, bias(es), ``W_hh`` rows."""
        axes = [UnitAxis(node.weight_key, Role.WEIGHT, node)]
        axes += [UnitAxis(k, Role.BIAS, node) for k in node.bias_keys]
        if node.recurrent_key is not None:
            axes.append(UnitAxis(node.recurrent_key, Role.RECURRENT, node))
        return axes

    def outgoing_axes(self, node: LayerNode) -> list[UnitAxis]:
        """Tensors holding the node's outgoing columns: consumers' weights, ``W_hh`` columns."""
        axes = [UnitAxis(c.weight_key, Role.OUT, c) for c in self.consumers(node)]
        if node.recurrent_key is not None:
            axes.append(UnitAxis(node.recurrent_key, Role.RECURRENT_OUT, node))
        return axes

    def resized(self, arch: Architecture, sizes: Mapping[str, int]) -> Architecture:
        """``arch`` with every hidden layer resized to ``sizes[name or label]`` (missing: its
        current size), each kind writing its own Architecture field, in forward order."""
        fields: dict[str, list[int]] = {}
        for node in self.hidden:
            size = sizes.get(node.name, sizes.get(node.label, node.size))
            field = node.spec.arch_field
            if field is not None:
                fields.setdefault(field, []).append(int(size))
        changes: dict[str, Any] = {
            field: tuple(values) if isinstance(getattr(arch, field), tuple) else values[0]
            for field, values in fields.items()
        }
        return arch.replace(**changes)


# --------------------------------------------------------------------------- building


def _kind_of(module: nn.Module) -> LayerKind | None:
    return next((s for s in KINDS.values() if s.hidden and isinstance(module, s.module_type)), None)


def build_graph(policy: Policy) -> LayerGraph:
    """Walk the encoder, the recurrent layer and the heads; no layer position is assumed.

    Module names come from ``policy.named_modules()``. Raises ``ValueError`` for a network
    this walk does not understand (an encoder layer other than Conv2d, ReLU, Flatten, Linear),
    rather than guessing.
    """
    names = {id(m): n for n, m in policy.named_modules()}
    nodes: list[LayerNode] = []
    producer: LayerNode | None = None
    in_units = policy.arch.obs_shape[0]
    pending = False  # the last node still waits for its ReLU
    counts: dict[Kind, int] = {}
    for module in policy.network:
        name = names[id(module)]
        spec = _kind_of(module)
        if isinstance(module, nn.ReLU):
            if not pending:
                raise ValueError(f"{name}: ReLU without a preceding conv or Linear layer")
            producer, pending = nodes[-1], False
        elif isinstance(module, nn.GELU):
            # GELU is not positively homogeneous: the fold factors below would be wrong
            raise ValueError(
                f"{name}: GELU encoder (PufferLib 3.0's Default) cannot be collapsed; "
                "fibers need ReLU layers"
            )
        elif isinstance(module, nn.Flatten):
            pass  # a Linear after a conv reads (channel, position) pairs: see LinearKind.shape
        elif spec is not None and spec.activation == Activation.RELU:
            counts[spec.kind] = counts.get(spec.kind, 0) + 1
            label = f"{spec.kind}{counts[spec.kind]}"
            nodes.append(spec.node(module, name, label, producer, in_units))
            pending = True
        else:
            raise ValueError(f"{name}: unsupported layer {type(module).__name__} in the encoder")
    if producer is None or pending:
        raise ValueError("encoder must end with a Linear layer followed by ReLU")
    rnn = policy.recurrent
    spec = _kind_of(rnn)
    if spec is None or not isinstance(spec, RecurrentKind):
        raise ValueError(f"unsupported recurrent layer {type(rnn).__name__}")
    recurrent = spec.node(rnn, names[id(rnn)], str(spec.kind), producer, producer.size)
    heads = [
        KINDS[Kind.HEAD].node(module, names[id(module)], label, recurrent, recurrent.size)
        for label, module in policy.heads.items()
    ]
    return LayerGraph([*nodes, recurrent, *heads])


def encoder_index(policy: Policy, node: LayerNode) -> int:
    """Position of ``node``'s module in ``policy.network`` (encoder layers only)."""
    module = policy.get_submodule(node.name)
    for i, m in enumerate(policy.network):
        if m is module:
            return i
    raise ValueError(f"{node.label} is not an encoder layer")


# --------------------------------------------------------------------------- unit views


def weight_view(node: LayerNode, weight: torch.Tensor) -> torch.Tensor:
    """The node's incoming weight as ``[units, gates, in_units, extent]`` (a view)."""
    return node.spec.weight_view(node, weight)


def unview_weight(node: LayerNode, view: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`weight_view` / :func:`recurrent_view` for any unit / input counts."""
    return node.spec.unview_weight(node, view)


def recurrent_view(node: LayerNode, weight_hh: torch.Tensor) -> torch.Tensor:
    """A recurrent layer's ``W_hh`` as ``[units, gates, units, 1]`` (a view)."""
    return node.spec.recurrent_view(node, weight_hh)


def bias_view(node: LayerNode, bias: torch.Tensor) -> torch.Tensor:
    """A bias as ``[units, gates]`` (a view)."""
    return node.spec.bias_view(node, bias)


def unview_bias(node: LayerNode, view: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`bias_view` for any unit count."""
    return node.spec.unview_bias(view)


def unit_view(axis: UnitAxis, tensor: torch.Tensor) -> torch.Tensor:
    """The unit view of ``tensor`` (a parameter, or anything shaped like it) for ``axis``."""
    if axis.role == Role.BIAS:
        return bias_view(axis.owner, tensor)
    if axis.role in (Role.RECURRENT, Role.RECURRENT_OUT):
        return recurrent_view(axis.owner, tensor)
    if axis.role in (Role.WEIGHT, Role.OUT):
        return weight_view(axis.owner, tensor)
    raise ValueError(f"unknown unit-axis role {axis.role!r}")


def take_units(
    axis: UnitAxis, tensor: torch.Tensor, units: torch.Tensor | list[int]
) -> torch.Tensor:
    """Copy of the entries of ``units`` (incoming rows or outgoing columns), unit axis kept."""
    idx = torch.as_tensor(units, dtype=torch.long, device=tensor.device)
    return unit_view(axis, tensor).index_select(axis.axis, idx).clone()


def put_units(
    axis: UnitAxis,
    tensor: torch.Tensor,
    units: torch.Tensor | list[int],
    values: torch.Tensor | float,
) -> None:
    """Write ``values`` (shaped like :func:`take_units`' result, or a scalar) in place."""
    view = unit_view(axis, tensor)
    idx = torch.as_tensor(units, dtype=torch.long, device=tensor.device)
    if not torch.is_tensor(values):
        shape = list(view.shape)
        shape[axis.axis] = len(idx)
        values = torch.full(shape, float(values), dtype=tensor.dtype, device=tensor.device)
    view.index_copy_(axis.axis, idx, values.to(tensor.dtype))


def add_units(
    axis: UnitAxis, tensor: torch.Tensor, units: torch.Tensor | list[int], values: torch.Tensor
) -> None:
    """Add ``values`` onto the entries of ``units`` in place (repeated units accumulate)."""
    idx = torch.as_tensor(units, dtype=torch.long, device=tensor.device)
    unit_view(axis, tensor).index_add_(axis.axis, idx, values.to(tensor.dtype))


def named_tensors(policy: Policy) -> Mapping[str, torch.Tensor]:
    """State-dict key → live parameter tensor (``.data``: edits are not tracked by autograd)."""
    return {k: p.data for k, p in policy.named_parameters()}
