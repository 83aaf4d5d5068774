"""A policy as PufferLib's C runtime reads it: ``weights.bin`` and generated C source.

PufferLib 2.0.2 ships ``pufferlib/puffernet.h``: layers (``Linear``, ``ReLU``, ``Conv2D``,
``LSTM``) that take their sizes as arguments and read their parameters, in the order they
are made, from one flat float32 file. Everything here is a pure function of a
:class:`~pufferfiber.core.policy.Policy` (or its :class:`~pufferfiber.core.policy.Architecture`):

* :func:`weight_tensors` / :func:`weights_bytes`: the parameters in the order the generated
  code reads them (encoder convs and Linears, weight then bias; the recurrent layer's
  ``weight_ih``, ``weight_hh``, ``bias_ih``, ``bias_hh``; the actor; the value head);
* :func:`policy_source`: ``policy.c``, the network for this policy's widths (the library
  functions ``fiber_net_make`` / ``fiber_net_step`` / ``fiber_net_reset`` step a batch of
  agents) and a ``main`` that filters observations (stdin) into logits and value (stdout),
  or times the batched step (``--bench BATCH STEPS``);
* :func:`game_source` and :func:`raylib_stub`: ``game.c``, which plays the policy inside an
  Ocean game's own C header (``pufferlib/ocean/<game>/<game>.h``) and prints the returns; the
  headers include ``raylib.h`` for rendering, which the wheel lacks, so a header of
  do-nothing stand-ins for the few raylib names they use is written beside it.

Gate layouts. ``puffernet.h``'s LSTM computes ``W_ih x + b_ih + W_hh h + b_hh`` as four
blocks in torch's order (input, forget, cell, output) with ``c' = f c + i g`` and
``h' = o tanh(c')``: torch's ``nn.LSTM`` rows copy over unchanged. The GRU cell puffernet
lacks is generated here with torch's ``nn.GRU`` equations (blocks reset, update, new;
``n = tanh(W_in x + b_in + r (W_hn h + b_hn))``, ``h' = (1 - z) n + z h``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch

from pufferfiber.core.policy import Architecture, Policy

# The C library functions of policy.c (used by game.c and the benchmark).
C_API = ("fiber_net_load", "fiber_net_make", "fiber_net_step", "fiber_net_reset")


class ExportUnsupported(ValueError):
    """A policy the C runtime export cannot express (one-line message)."""


def check_exportable(arch: Architecture) -> None:
    """Raise :class:`ExportUnsupported` for a policy ``policy.c`` cannot run."""
    # getattr: architectures recorded before the activation option are all ReLU
    activation = getattr(arch, "activation", "relu")
    if activation != "relu":
        raise ExportUnsupported(
            f"puffernet.h has no {activation.upper()} layer: only ReLU policies export to "
            "puffernet (use --format torchscript)"
        )
    if arch.kind == "cnn":
        if len(arch.obs_shape) != 3:
            raise ExportUnsupported(f"cnn observation shape {arch.obs_shape} is not (C, H, W)")
        _, h, w = arch.conv_output_shape()
        if h < 1 or w < 1:
            raise ExportUnsupported("the conv layers leave no output pixels")
    elif len(arch.obs_shape) != 1:
        raise ExportUnsupported(f"mlp observation shape {arch.obs_shape} is not flat")


def weight_tensors(policy: Policy) -> list[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` of every parameter, in the order ``policy.c`` reads them."""
    out: list[tuple[str, torch.Tensor]] = []
    for i, layer in enumerate(policy.network):
        if isinstance(layer, torch.nn.Conv2d | torch.nn.Linear):
            bias = cast(torch.Tensor, layer.bias)
            out += [(f"network.{i}.weight", layer.weight), (f"network.{i}.bias", bias)]
    rnn = policy.recurrent
    out += [(f"recurrent.{n}", getattr(rnn, n)) for n in _RNN_ORDER]
    out += [("actor.weight", policy.actor.weight), ("actor.bias", policy.actor.bias)]
    out += [("value_fn.weight", policy.value_fn.weight), ("value_fn.bias", policy.value_fn.bias)]
    return [(n, t.detach()) for n, t in out]


_RNN_ORDER = ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")


def weights_bytes(policy: Policy) -> bytes:
    """``weights.bin``: every parameter, row-major float32 (little-endian), concatenated."""
    parts = [
        t.cpu().float().contiguous().numpy().astype("<f4").ravel()
        for _, t in weight_tensors(policy)
    ]
    return np.concatenate(parts).tobytes()


def weight_count(policy: Policy) -> int:
    """Number of floats in ``weights.bin`` (the policy's parameter count)."""
    return sum(t.numel() for _, t in weight_tensors(policy))


@dataclass(frozen=True)
class _Layer:
    """One generated layer: its C declaration, constructor and forward call."""

    field: str
    make: str
    call: str
    output: str


def _layers(arch: Architecture) -> tuple[list[_Layer], str]:
    """The encoder's layers and the C expression of its output."""
    layers: list[_Layer] = []
    prev = "net->input"
    if arch.kind == "cnn":
        c_in, h, w = arch.obs_shape
        for i, (c, (k, s)) in enumerate(zip(arch.channels, arch.kernels, strict=True)):
            ho, wo = (h - k) // s + 1, (w - k) // s + 1
            layers.append(
                _Layer(
                    f"Conv2D* conv{i};",
                    f"net->conv{i} = make_conv2d(w, batch, {w}, {h}, {c_in}, {c}, {k}, {s});",
                    f"conv2d(net->conv{i}, {prev});",
                    f"net->conv{i}->output",
                )
            )
            prev = f"net->conv{i}->output"
            layers.append(
                _Layer(
                    f"ReLU* conv_relu{i};",
                    f"net->conv_relu{i} = make_relu(batch, {c * ho * wo});",
                    f"relu(net->conv_relu{i}, {prev});",
                    f"net->conv_relu{i}->output",
                )
            )
            prev = f"net->conv_relu{i}->output"
            c_in, h, w = c, ho, wo
    d_in = arch.flat_size()
    for i, width in enumerate(arch.hidden):
        layers.append(
            _Layer(
                f"Linear* fc{i};",
                f"net->fc{i} = make_linear(w, batch, {d_in}, {width});",
                f"linear(net->fc{i}, {prev});",
                f"net->fc{i}->output",
            )
        )
        layers.append(
            _Layer(
                f"ReLU* fc_relu{i};",
                f"net->fc_relu{i} = make_relu(batch, {width});",
                f"relu(net->fc_relu{i}, net->fc{i}->output);",
                f"net->fc_relu{i}->output",
            )
        )
        prev = f"net->fc_relu{i}->output"
        d_in = width
    return layers, prev


_GRU_C = r"""
/* A GRU cell with torch's nn.GRU equations (puffernet.h has none). Parameters in torch's
   order: weight_ih [3H, in], weight_hh [3H, H], bias_ih [3H], bias_hh [3H]; blocks r, z, n. */
typedef struct FiberGRU FiberGRU;
struct FiberGRU {
    float* state_h;
    float* gates_input;
    float* gates_state;
    float* weights_input;
    float* weights_state;
    float* bias_input;
    float* bias_state;
    int batch_size;
    int input_size;
    int hidden_size;
};

static FiberGRU* make_fiber_gru(Weights* weights, int batch_size, int input_size, int hidden_size) {
    int state_size = batch_size*hidden_size;
    FiberGRU* layer = calloc(1, sizeof(FiberGRU) + 7*state_size*sizeof(float));
    float* buffer = (float*)(layer + 1);
    *layer = (FiberGRU){
        .state_h = buffer,
        .gates_input = buffer + state_size,
        .gates_state = buffer + 4*state_size,
        .weights_input = get_weights(weights, 3*hidden_size*input_size),
        .weights_state = get_weights(weights, 3*hidden_size*hidden_size),
        .bias_input = get_weights(weights, 3*hidden_size),
        .bias_state = get_weights(weights, 3*hidden_size),
        .batch_size = batch_size,
        .input_size = input_size,
        .hidden_size = hidden_size,
    };
    return layer;
}

static void fiber_gru(FiberGRU* layer, float* input) {
    int n = layer->hidden_size;
    _linear(input, layer->weights_input, layer->bias_input, layer->gates_input,
        layer->batch_size, layer->input_size, 3*n);
    _linear(layer->state_h, layer->weights_state, layer->bias_state, layer->gates_state,
        layer->batch_size, n, 3*n);
    for (int b = 0; b < layer->batch_size; b++) {
        float* gi = layer->gates_input + 3*b*n;
        float* gh = layer->gates_state + 3*b*n;
        float* h = layer->state_h + b*n;
        for (int i = 0; i < n; i++) {
            float r = _sigmoid(gi[i] + gh[i]);
            float z = _sigmoid(gi[n + i] + gh[n + i]);
            float c = tanhf(gi[2*n + i] + r*gh[2*n + i]);
            h[i] = (1.0f - z)*c + z*h[i];
        }
    }
}
"""

_POLICY_C = r"""/* Generated by `pufferfiber export --format puffernet` for one policy:
   %(summary)s
   Build: cc -O2 -I <folder holding puffernet.h> policy.c -lm -o policy
   Filter: ./policy weights.bin < obs.f32 > out.f32
     obs.f32: rows of %(obs)d float32 (one agent's observations, in order); out.f32: per row
     %(actions)d logits then the value (float32); the recurrent state starts at zero and is
     carried from row to row.
   Timing: ./policy weights.bin --bench BATCH STEPS (prints seconds per batched step).
   Library (define FIBER_NET_NO_MAIN and #include this file): fiber_net_load, fiber_net_make
   (a batch of agents), fiber_net_step, fiber_net_reset, fiber_net_free. */
#define _DEFAULT_SOURCE  /* clock_gettime, and M_PI for the Ocean headers game.c includes */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "puffernet.h"

#define FIBER_OBS_SIZE %(obs)d
#define FIBER_N_ACTIONS %(actions)d
#define FIBER_HIDDEN %(hidden)d
#define FIBER_NUM_WEIGHTS %(n_weights)d
#define FIBER_INPUT_SCALE %(scale)sf
%(gru)s
typedef struct FiberNet FiberNet;
struct FiberNet {
    int batch;
    float* input;
    %(fields)s
    %(rnn_field)s
    Linear* actor;
    Linear* value_fn;
};

/* The weights of weights.bin, or NULL (message on stderr) when the file is missing or its
   size is not FIBER_NUM_WEIGHTS floats. */
Weights* fiber_net_load(const char* path) {
    FILE* f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "cannot open %%s\n", path);
        return NULL;
    }
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fclose(f);
    if (size != (long)FIBER_NUM_WEIGHTS*(long)sizeof(float)) {
        fprintf(stderr, "%%s holds %%ld bytes, expected %%ld (%%d float32)\n", path, size,
            (long)FIBER_NUM_WEIGHTS*(long)sizeof(float), FIBER_NUM_WEIGHTS);
        return NULL;
    }
    return load_weights(path, FIBER_NUM_WEIGHTS);
}

/* A network stepping `batch` agents at once (the layers' buffers are per batch). */
FiberNet* fiber_net_make(Weights* w, int batch) {
    w->idx = 0;
    FiberNet* net = calloc(1, sizeof(FiberNet));
    net->batch = batch;
    net->input = calloc((size_t)batch*FIBER_OBS_SIZE, sizeof(float));
    %(makes)s
    %(rnn_make)s
    net->actor = make_linear(w, batch, FIBER_HIDDEN, FIBER_N_ACTIONS);
    net->value_fn = make_linear(w, batch, FIBER_HIDDEN, 1);
    assert(w->idx == w->size);
    return net;
}

/* Zero the recurrent state of one agent (agent < 0: all of them). */
void fiber_net_reset(FiberNet* net, int agent) {
    int lo = agent < 0 ? 0 : agent, hi = agent < 0 ? net->batch : agent + 1;
    size_t n = (size_t)(hi - lo)*FIBER_HIDDEN*sizeof(float);
    %(rnn_reset)s
}

/* One step of every agent: obs [batch, FIBER_OBS_SIZE]; afterwards the logits are in
   net->actor->output [batch, FIBER_N_ACTIONS] and the values in net->value_fn->output. */
void fiber_net_step(FiberNet* net, const float* obs) {
    for (int i = 0; i < net->batch*FIBER_OBS_SIZE; i++)
        net->input[i] = obs[i]*FIBER_INPUT_SCALE;
    %(calls)s
    %(rnn_call)s
    linear(net->actor, %(rnn_out)s);
    linear(net->value_fn, %(rnn_out)s);
}

void fiber_net_free(FiberNet* net) {
    free(net->input);
    %(frees)s
    free(net->actor);
    free(net->value_fn);
    free(net);
}

/* The most likely action of agent b (the first of equal logits, as torch's argmax). */
int fiber_net_greedy(FiberNet* net, int b) {
    float* logits = net->actor->output + b*FIBER_N_ACTIONS;
    int best = 0;
    for (int a = 1; a < FIBER_N_ACTIONS; a++)
        if (logits[a] > logits[best]) best = a;
    return best;
}

#ifndef FIBER_NET_NO_MAIN
static int fiber_bench(Weights* w, int batch, int steps) {
    FiberNet* net = fiber_net_make(w, batch);
    float* obs = calloc((size_t)batch*FIBER_OBS_SIZE, sizeof(float));
    unsigned int seed = 12345u;
    for (int i = 0; i < batch*FIBER_OBS_SIZE; i++) {
        seed = seed*1664525u + 1013904223u;
        obs[i] = (float)(seed >> 8)/16777216.0f;
    }
    fiber_net_step(net, obs);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    float sink = 0.0f;
    for (int s = 0; s < steps; s++) {
        fiber_net_step(net, obs);
        sink += net->value_fn->output[0];
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double seconds = (double)(t1.tv_sec - t0.tv_sec) + 1e-9*(double)(t1.tv_nsec - t0.tv_nsec);
    printf("batch %%d steps %%d seconds_per_step %%.9f checksum %%g\n", batch, steps,
        seconds/steps, (double)sink);
    fiber_net_free(net);
    free(obs);
    return 0;
}

int main(int argc, char** argv) {
    if (argc != 2 && !(argc == 5 && strcmp(argv[2], "--bench") == 0)) {
        fprintf(stderr, "usage: %%s weights.bin < obs.f32 > out.f32\n"
                        "       %%s weights.bin --bench BATCH STEPS\n", argv[0], argv[0]);
        return 2;
    }
    Weights* w = fiber_net_load(argv[1]);
    if (!w) return 2;
    if (argc == 5) {
        int batch = atoi(argv[3]), steps = atoi(argv[4]);
        if (batch < 1 || steps < 1) {
            fprintf(stderr, "BATCH and STEPS must be positive integers\n");
            return 2;
        }
        return fiber_bench(w, batch, steps);
    }
    FiberNet* net = fiber_net_make(w, 1);
    float obs[FIBER_OBS_SIZE];
    size_t got;
    while ((got = fread(obs, sizeof(float), FIBER_OBS_SIZE, stdin)) == FIBER_OBS_SIZE) {
        fiber_net_step(net, obs);
        fwrite(net->actor->output, sizeof(float), FIBER_N_ACTIONS, stdout);
        fwrite(net->value_fn->output, sizeof(float), 1, stdout);
    }
    if (got != 0) {
        fprintf(stderr, "stdin ended inside a row (%%zu of %%d floats)\n", got, FIBER_OBS_SIZE);
        return 2;
    }
    fiber_net_free(net);
    free(w);
    return 0;
}
#endif
"""


def _summary(arch: Architecture, n_weights: int) -> str:
    enc = f"conv {list(arch.channels)} -> " if arch.kind == "cnn" else ""
    return (
        f"{arch.kind} obs {list(arch.obs_shape)} -> {enc}Linear {list(arch.hidden)} -> "
        f"{arch.rnn.upper()} {arch.lstm} -> {arch.n_actions} logits + value; "
        f"{n_weights} float32 weights"
    )


def policy_source(arch: Architecture) -> str:
    """``policy.c`` for a policy of these sizes (it reads ``weights.bin`` of
    :func:`weights_bytes`)."""
    check_exportable(arch)
    layers, enc_out = _layers(arch)
    n_weights = arch.parameter_count()
    h = arch.lstm
    if arch.rnn == "lstm":
        rnn_field = "LSTM* rnn;"
        rnn_make = f"net->rnn = make_lstm(w, batch, {arch.hidden[-1]}, {h});"
        rnn_call = f"lstm(net->rnn, {enc_out});"
        rnn_reset = (
            "memset(net->rnn->state_h + lo*FIBER_HIDDEN, 0, n);\n"
            "    memset(net->rnn->state_c + lo*FIBER_HIDDEN, 0, n);"
        )
        gru = ""
    else:
        rnn_field = "FiberGRU* rnn;"
        rnn_make = f"net->rnn = make_fiber_gru(w, batch, {arch.hidden[-1]}, {h});"
        rnn_call = f"fiber_gru(net->rnn, {enc_out});"
        rnn_reset = "memset(net->rnn->state_h + lo*FIBER_HIDDEN, 0, n);"
        gru = _GRU_C
    sep = "\n    "
    fields: dict[str, Any] = {
        "summary": _summary(arch, n_weights),
        "obs": int(np.prod(arch.obs_shape)),
        "actions": arch.n_actions,
        "hidden": h,
        "n_weights": n_weights,
        "scale": repr(float(np.float32(1.0 / 255.0))) if arch.kind == "cnn" else "1.0",
        "gru": gru,
        "fields": sep.join(x.field for x in layers),
        "makes": sep.join(x.make for x in layers),
        "calls": sep.join(x.call for x in layers),
        "frees": sep.join(f"free(net->{x.field.split('*')[1].strip(' ;')});" for x in layers)
        + f"{sep}free(net->rnn);",
        "rnn_field": rnn_field,
        "rnn_make": rnn_make,
        "rnn_call": rnn_call,
        "rnn_reset": rnn_reset,
        "rnn_out": "net->rnn->state_h",
    }
    return _POLICY_C % fields


# --------------------------------------------------------------------------- the game loop

# Per Ocean game folder: the C struct, and the name of its terminal-flag buffer field.
GAME_STRUCTS: dict[str, tuple[str, str]] = {
    "pong": ("Pong", "terminals"),
    "breakout": ("Breakout", "dones"),
}


def _c_value(v: float | int) -> str:
    return repr(float(v)) if isinstance(v, float) else str(int(v))


_GAME_C = r"""/* Generated by `pufferfiber export --format puffernet`: plays the exported policy in
   PufferLib's own %(folder)s C game (%(header)s) and prints the episode returns.
   Build: cc -O2 -I <folder holding puffernet.h> -I <ocean/%(folder)s folder> -I <this folder>
          game.c -lm -o game
   Run:   ./game weights.bin EPISODES SEED greedy|sample [NUM_ENVS]
   Prints "episodes N mean_return M std S" then one return per line. A game longer than
   %(max_steps)d agent steps is cut and counted with its return so far (as Python's
   evaluation does). Game settings (the run's [env] section): %(settings_text)s. */
#define FIBER_NET_NO_MAIN
#include "policy.c"
#include "%(header)s"

static unsigned long long fiber_rng_state = 88172645463325252ull;

static float fiber_uniform(void) {
    fiber_rng_state ^= fiber_rng_state << 13;
    fiber_rng_state ^= fiber_rng_state >> 7;
    fiber_rng_state ^= fiber_rng_state << 17;
    return (float)(fiber_rng_state >> 40)/16777216.0f;
}

/* An action drawn from the softmax of agent b's logits. */
static int fiber_sample(FiberNet* net, int b) {
    float* logits = net->actor->output + b*FIBER_N_ACTIONS;
    float top = logits[0], total = 0.0f, p[FIBER_N_ACTIONS];
    for (int a = 1; a < FIBER_N_ACTIONS; a++) top = fmaxf(top, logits[a]);
    for (int a = 0; a < FIBER_N_ACTIONS; a++) total += (p[a] = expf(logits[a] - top));
    float u = fiber_uniform()*total, acc = 0.0f;
    for (int a = 0; a < FIBER_N_ACTIONS; a++) {
        acc += p[a];
        if (u < acc) return a;
    }
    return FIBER_N_ACTIONS - 1;
}

int main(int argc, char** argv) {
    if (argc != 5 && argc != 6) {
        fprintf(stderr, "usage: %%s weights.bin EPISODES SEED greedy|sample [NUM_ENVS]\n", argv[0]);
        return 2;
    }
    int episodes = atoi(argv[2]);
    unsigned int seed = (unsigned int)strtoul(argv[3], NULL, 10);
    int greedy = strcmp(argv[4], "greedy") == 0;
    if (episodes < 1 || (!greedy && strcmp(argv[4], "sample") != 0)) {
        fprintf(stderr, "EPISODES must be >= 1 and the mode greedy or sample\n");
        return 2;
    }
    int n = argc == 6 ? atoi(argv[5]) : 8;
    if (n < 1) n = 1;
    if (n > episodes) n = episodes;
    Weights* w = fiber_net_load(argv[1]);
    if (!w) return 2;
    FiberNet* net = fiber_net_make(w, n);
    float* obs = calloc((size_t)n*FIBER_OBS_SIZE, sizeof(float));
    int* actions = calloc(n, sizeof(int));
    float* rewards = calloc(n, sizeof(float));
    unsigned char* terminals = calloc(n, sizeof(unsigned char));
    double* running = calloc(n, sizeof(double));
    long* lengths = calloc(n, sizeof(long));
    char* active = calloc(n, 1);
    double* returns = calloc(episodes, sizeof(double));
    LogBuffer* logs = allocate_logbuffer(LOG_BUFFER_SIZE);
    %(struct)s* envs = calloc(n, sizeof(%(struct)s));
    srand(seed);
    fiber_rng_state ^= (unsigned long long)seed*0x9E3779B97F4A7C15ull;
    for (int i = 0; i < n; i++) {
        envs[i] = (%(struct)s){
            .observations = obs + i*FIBER_OBS_SIZE,
            .actions = actions + i,
            .rewards = rewards + i,
            .%(terminal)s = terminals + i,
            .log_buffer = logs,
            %(settings)s
        };
        init(&envs[i]);
        reset(&envs[i]);
        active[i] = 1;
    }
    int started = n, finished = 0;
    while (finished < episodes) {
        fiber_net_step(net, obs);
        for (int i = 0; i < n; i++)
            actions[i] = greedy ? fiber_net_greedy(net, i) : fiber_sample(net, i);
        for (int i = 0; i < n; i++) {
            if (!active[i]) continue;
            step(&envs[i]);
            running[i] += rewards[i];
            lengths[i] += 1;
            int cut = !terminals[i] && lengths[i] >= %(max_steps)d;
            if (!terminals[i] && !cut) continue;
            returns[finished++] = running[i];
            running[i] = 0.0;
            lengths[i] = 0;
            fiber_net_reset(net, i);
            if (cut) reset(&envs[i]);
            if (started < episodes) started++;
            else active[i] = 0;
        }
    }
    double mean = 0.0, var = 0.0;
    for (int e = 0; e < episodes; e++) mean += returns[e]/episodes;
    for (int e = 0; e < episodes; e++) var += (returns[e] - mean)*(returns[e] - mean)/episodes;
    printf("episodes %%d mean_return %%.4f std %%.4f\n", episodes, mean, sqrt(var));
    for (int e = 0; e < episodes; e++) printf("%%.4f\n", returns[e]);
    return 0;
}
"""


def game_source(
    arch: Architecture, folder: str, settings: dict[str, float | int], max_steps: int
) -> str:
    """``game.c``: the policy of ``policy.c`` playing Ocean game ``folder`` (``pong``,
    ``breakout``) with these constructor ``settings``."""
    if folder not in GAME_STRUCTS:
        raise ExportUnsupported(f"no C game loop for Ocean game {folder!r}")
    struct, terminal = GAME_STRUCTS[folder]
    text = ", ".join(f"{k}={_c_value(v)}" for k, v in settings.items())
    return _GAME_C % {
        "folder": folder,
        "header": f"{folder}.h",
        "struct": struct,
        "terminal": terminal,
        "settings": "\n            ".join(f".{k} = {_c_value(v)}," for k, v in settings.items()),
        "settings_text": text,
        "max_steps": int(max_steps),
    }


def raylib_stub() -> str:
    """``raylib.h``: do-nothing stand-ins for the raylib names the Ocean headers' render code
    uses (never called when the game runs headless; the wheel ships no raylib)."""
    return r"""/* Written by `pufferfiber export`: stand-ins for the raylib names used by the
   render code of PufferLib's Ocean headers, so the games compile headless. None is called. */
#ifndef FIBER_RAYLIB_STUB
#define FIBER_RAYLIB_STUB
#include <stdbool.h>
typedef struct Color { unsigned char r, g, b, a; } Color;
typedef struct Vector2 { float x, y; } Vector2;
typedef struct Rectangle { float x, y, width, height; } Rectangle;
typedef struct Texture2D { unsigned int id; int width, height, mipmaps, format; } Texture2D;
typedef struct Sound { int frameCount; } Sound;
#define WHITE ((Color){255, 255, 255, 255})
#define RED ((Color){230, 41, 55, 255})
#define ORANGE ((Color){255, 161, 0, 255})
#define YELLOW ((Color){253, 249, 0, 255})
#define GREEN ((Color){0, 228, 48, 255})
#define SKYBLUE ((Color){102, 191, 255, 255})
#define BLUE ((Color){0, 121, 241, 255})
#define KEY_ESCAPE 256
#define KEY_TAB 258
static inline void InitWindow(int width, int height, const char* title) {}
static inline void CloseWindow(void) {}
static inline void SetTargetFPS(int fps) {}
static inline void ToggleFullscreen(void) {}
static inline bool IsKeyDown(int key) { return false; }
static inline bool IsKeyPressed(int key) { return false; }
static inline void BeginDrawing(void) {}
static inline void EndDrawing(void) {}
static inline void ClearBackground(Color c) {}
static inline void DrawFPS(int x, int y) {}
static inline void DrawRectangle(int x, int y, int w, int h, Color c) {}
static inline void DrawText(const char* t, int x, int y, int s, Color c) {}
static inline int MeasureText(const char* t, int s) { return 0; }
static inline const char* TextFormat(const char* f, ...) { return f; }
static inline Texture2D LoadTexture(const char* f) { return (Texture2D){0}; }
static inline void DrawTexturePro(Texture2D t, Rectangle s, Rectangle d, Vector2 o,
                                  float r, Color c) {}
static inline Sound LoadSound(const char* f) { return (Sound){0}; }
static inline void PlaySound(Sound s) {}
#endif
"""
