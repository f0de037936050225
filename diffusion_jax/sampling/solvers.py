"""DPM-Solver++ and UniPC: few-step ODE solvers on the guided x_0 prediction, as compiled scans.

    from diffusion_jax.sampling import solvers
    sched = schedules.make_schedule("linear", 1000)         # the full process, not respaced
    x0 = solvers.sample_dpmpp(apply_fn, params, sched, (16, 32, 32, 3), key, steps=20)  # 2M
    x0 = solvers.sample_dpmpp(..., steps=20, order=3, spacing="karras")              # 3M Karras
    x0 = solvers.sample_dpmpp(..., steps=20, method="singlestep")                    # 2S
    x0 = solvers.sample_unipc(..., steps=10, order=3, variant="bh2")                # UniPC-3
    x0, xs = solvers.sample_unipc(..., steps=10, return_trajectory=True)   # xs [steps, *shape]

Each follows a diffusers scheduler run with data prediction and final sigma 0: `sample_dpmpp`
DPMSolverMultistepScheduler (algorithm_type="dpmsolver++", solver_type="midpoint") or
DPMSolverSinglestepScheduler, `sample_unipc` UniPCMultistepScheduler (predict_x0=True,
lower_order_final=True), with the spacings of `core.spacing` (`timestep_spacing`,
`use_karras_sigmas`, `use_lu_lambdas`), `thresholding=(ratio, max)` their dynamic thresholding and
`lower_order_final` theirs. Like diffusers, a solver warms up with lower orders, takes the last step
(into sigma 0) at first order, which returns x_0_hat, and UniPC's step i returns the predicted
x_{i+1}, corrected (UniC) only after the network has been evaluated there. `xs[i]` is the sample
after step i (diffusers' `prev_sample`); `xs[-1]` is the result. The network sees the model
timestep of each level (fractional for "karras" and "logsnr", where diffusers rounds it).

Every update is linear in the current sample, an anchor sample (UniPC's uncorrected start, 2S's
first half-step) and the last few x_0 predictions, with coefficients fixed by the noise levels: they
are computed once on the host in float64 from the papers' formulas (`_plan`), and the scan only
evaluates the network and combines. x_T comes from fold_in(rng, T) as in `samplers`.
"""

from __future__ import annotations

import functools
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.core.schedules import Schedule
from diffusion_jax.core.spacing import SPACINGS, noise_levels
from diffusion_jax.sampling.predict import make_predict_fn
from diffusion_jax.sampling.samplers import Denoiser, Guidance, _x_init

_DENOISER, _GUIDANCE = Denoiser(), Guidance()


def dynamic_threshold(x0: jax.Array, ratio: float, max_value: float) -> jax.Array:
    """Imagen's dynamic thresholding (Saharia et al. 2022): per sample, s = the `ratio` quantile
    of |x_0| clipped to [1, max_value], x_0 <- clip(x_0, -s, s) / s."""
    flat = x0.reshape(x0.shape[0], -1)
    s = jnp.clip(jnp.quantile(jnp.abs(flat), ratio, axis=1), 1.0, max_value)[:, None]
    return (jnp.clip(flat, -s, s) / s).reshape(x0.shape)


# --- coefficients (host, float64). `lv` = (lambda, alpha, sigma) [n + 1] of the levels, noisiest
# first, the last at sigma 0 (lambda = +inf); `m[l]` is the x_0 prediction at level l, a unit
# vector, so that each update returns (a, c): x_t = a x_base + c . m.


def _first_order(lv, s, t):
    """DPM-Solver++(1) = DDIM: x_t = sigma_t / sigma_s x_s + alpha_t (1 - e^{-h}) m_s,
    h = lambda_t - lambda_s (Lu et al. 2022b, eq. 9)."""
    lam, alpha, sigma = lv
    return sigma[t] / sigma[s], -alpha[t] * np.expm1(lam[s] - lam[t]) * np.eye(lam.size)[s]


def _dpmpp_multistep(lv, i, order):
    """DPM-Solver++(2M), midpoint form, or (3M) from level i to i + 1 (Lu et al. 2022b, Alg. 2;
    Lu et al. 2022a, eq. 3.10 for the third order), base x_i: with r_k = h_k / h and
    D1_0 = (m_i - m_{i-1}) / r_0, 2M: x_t = sigma_t / sigma_s x_i + alpha_t phi (m_i + D1_0 / 2),
    phi = 1 - e^{-h}; 3M adds (1 - phi / h) D1 - ((h - phi) / h^2 - 1/2) D2 to the bracket."""
    lam, alpha, sigma = lv
    if order == 1:
        return _first_order(lv, i, i + 1)
    m, t = np.eye(lam.size), i + 1
    h = lam[t] - lam[i]
    phi = -np.expm1(-h)
    r0 = (lam[i] - lam[i - 1]) / h
    d1_0 = (m[i] - m[i - 1]) / r0
    if order == 2:
        return sigma[t] / sigma[i], alpha[t] * phi * (m[i] + 0.5 * d1_0)
    r1 = (lam[i - 1] - lam[i - 2]) / h
    d1_1 = (m[i - 1] - m[i - 2]) / r1
    d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
    d2 = (d1_0 - d1_1) / (r0 + r1)
    c = phi * m[i] + (1.0 - phi / h) * d1 - ((h - phi) / h**2 - 0.5) * d2
    return sigma[t] / sigma[i], alpha[t] * c


def _dpmpp_singlestep2(lv, s1):
    """DPM-Solver++(2S) from level s1 to t = s1 + 2 through s0 = s1 + 1 (diffusers' singlestep
    order 2): x_t = sigma_t / sigma_s1 x_s1 + alpha_t phi (m_s1 + (m_s0 - m_s1) / (2 r)),
    h = lambda_t - lambda_s1, r = (lambda_s0 - lambda_s1) / h, phi = 1 - e^{-h}."""
    lam, alpha, sigma = lv
    m, s0, t = np.eye(lam.size), s1 + 1, s1 + 2
    h = lam[t] - lam[s1]
    r = (lam[s0] - lam[s1]) / h
    c = -np.expm1(-h) * (m[s1] + (m[s0] - m[s1]) / (2.0 * r))
    return sigma[t] / sigma[s1], alpha[t] * c


def _unipc(lv, s, order, variant, corrector):
    """UniP-p (predictor) or UniC-p (corrector, also using m_t) from level s to t = s + 1 in the
    data form, B(h) version (Zhao et al. 2023, Alg. 2-3): x_t = sigma_t / sigma_s x_s
    + alpha_t (1 - e^{-h}) m_s - alpha_t B(h) sum_k rho_k D_k, D_k = (m_{s_k} - m_s) / r_k at the
    older levels s_k = s - k, r_k = (lambda_{s_k} - lambda_s) / h, D_p = m_t - m_s (r = 1); rho
    solves R rho = b, R_jk = r_k^j, b_j = j! h phi_{j+1}(-h) / B(h), B(h) = -h (bh1) or
    e^{-h} - 1 (bh2); rho = 1/2 for UniP-2 and UniC-1, as in the paper's and diffusers' code."""
    lam, alpha, sigma = lv
    a, c = _first_order(lv, s, s + 1)
    if order == 1 and not corrector:
        return a, c
    m, t = np.eye(lam.size), s + 1
    hh = lam[s] - lam[t]  # -h
    b_h = hh if variant == "bh1" else np.expm1(hh)
    older = [s - k for k in range(1, order)]
    r = np.array([(lam[o] - lam[s]) / -hh for o in older] + [1.0])
    d = [(m[o] - m[s]) / r_k for o, r_k in zip(older, r, strict=False)] + [m[t] - m[s]]
    b, phi_k, factorial = [], np.expm1(hh) / hh - 1.0, 1.0
    for j in range(1, order + 1):
        b.append(phi_k * factorial / b_h)
        factorial *= j + 1
        phi_k = phi_k / hh - 1.0 / factorial
    big_r = np.vander(r, order, increasing=True).T
    if corrector:
        rho = [0.5] if order == 1 else np.linalg.solve(big_r, b)
    else:
        rho = [0.5] if order == 2 else np.linalg.solve(big_r[:-1, :-1], b[:-1])
    return a, c - alpha[t] * b_h * sum(rho_k * d_k for rho_k, d_k in zip(rho, d, strict=False))


def _orders(solver: str, n: int, order: int, lower_order_final: bool) -> list[int]:
    """Each step's order, as diffusers picks it: warm-up min(order, i + 1); the last step first
    order (sigma 0); `lower_order_final` caps DPM++'s second-last step at 2 when n < 15 and UniPC's
    step i at n - i; 2S alternates 1, 2 (its pairs), the last step 1."""
    if solver == "singlestep":
        return [2 if i % 2 and i < n - 1 else 1 for i in range(n)]
    orders = [min(order, i + 1) for i in range(n)]
    for i in range(n):
        if solver == "unipc":
            orders[i] = min(orders[i], n - i)
        elif i == n - 2 and lower_order_final and n < 15:
            orders[i] = min(orders[i], 2)
    orders[-1] = 1
    return orders


def _plan(solver, levels, order, *, variant="bh2", lower_order_final=True) -> dict:
    """The scan's tables for `levels` = (t, alpha, sigma) [n]: per step i, the corrector
    x_c = cx x + ca anchor + cm . hist, the anchor (x_c if take), the predictor
    x_{i+1} = pa anchor + pm . hist, with hist[d] the x_0 prediction at level i - d."""
    n, width = levels[0].size, order + 1
    alpha, sigma = np.append(levels[1], 1.0), np.append(levels[2], 0.0)
    with np.errstate(divide="ignore"):  # lambda = +inf at sigma 0
        lv = (np.log(alpha) - np.log(sigma), alpha, sigma)
    rows = {k: np.zeros(n) for k in ("cx", "ca", "pa")}
    rows.update(cm=np.zeros((n, width)), pm=np.zeros((n, width)), take=np.ones(n, bool))
    orders = _orders(solver, n, order, lower_order_final)
    history = lambda vec, i: [vec[i - d] if i >= d else 0.0 for d in range(width)]  # noqa: E731
    for i, p in enumerate(orders):
        rows["cx"][i] = 1.0
        if solver == "unipc" and i > 0:
            a, c = _unipc(lv, i - 1, orders[i - 1], variant, corrector=True)
            rows["cx"][i], rows["ca"][i], rows["cm"][i] = 0.0, a, history(c, i)
        if solver == "unipc":
            a, c = _unipc(lv, i, p, variant, corrector=False)
        elif solver == "singlestep" and p == 2:
            (a, c), rows["take"][i] = _dpmpp_singlestep2(lv, i - 1), False
        else:
            a, c = _dpmpp_multistep(lv, i, p)
        rows["pa"][i], rows["pm"][i] = a, history(c, i)
    tables = {k: jnp.asarray(v, jnp.float32) for k, v in rows.items()}
    for name, values in zip(("t", "alpha", "sigma"), levels, strict=True):
        tables[name] = jnp.asarray(values, jnp.float32)
    return {**tables, "take": jnp.asarray(rows["take"])}


def _combine(coefs: jax.Array, hist: jax.Array) -> jax.Array:
    # an unrolled sum, not a dot: accelerators may round a float32 matmul to bf16/tf32
    return sum(coefs[d] * hist[d] for d in range(hist.shape[0]))


@functools.partial(
    jax.jit,
    static_argnames=(
        "apply_fn",
        "shape",
        "num_timesteps",
        "denoiser",
        "thresholding",
        "return_trajectory",
    ),
)
def _solve(
    apply_fn,
    params,
    plan,
    shape,
    rng,
    num_timesteps,
    *,
    y,
    denoiser,
    guidance,
    x_T,
    thresholding,
    return_trajectory,
):
    """The scan over `_plan`'s rows: network, corrector, anchor, predictor."""
    predict = make_predict_fn(apply_fn, params, y=y, denoiser=denoiser, guidance=guidance)
    batch = (shape[0],)

    def step(carry, row):
        x, anchor, hist = carry
        x0, _ = predict(x, *(jnp.full(batch, row[k]) for k in ("t", "alpha", "sigma")))
        if thresholding is not None:
            x0 = dynamic_threshold(x0, *thresholding)
        hist = jnp.concatenate([x0[None], hist[:-1]])
        x_c = row["cx"] * x + row["ca"] * anchor + _combine(row["cm"], hist)
        anchor = jnp.where(row["take"], x_c, anchor)
        x_next = row["pa"] * anchor + _combine(row["pm"], hist)
        return (x_next, anchor, hist), x_next if return_trajectory else None

    x_init = _x_init(rng, shape, num_timesteps, x_T)
    hist = jnp.zeros((plan["pm"].shape[1], *shape), jnp.float32)
    (x, _, _), xs = jax.lax.scan(step, (x_init, x_init, hist), plan)
    return (x, xs) if return_trajectory else x


def _levels(schedule: Schedule, steps, spacing: str, steps_offset: int):
    """Checks the settings shared by the solvers; the spacing's (t, alpha, sigma)."""
    if not isinstance(steps, int | np.integer) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}.")
    if spacing not in SPACINGS:
        raise ValueError(f"Unknown spacing {spacing!r}; choose one of {', '.join(SPACINGS)}.")
    if isinstance(schedule.alphas_cumprod, jax.core.Tracer):
        raise ValueError("The solvers build their tables on the host: pass a concrete schedule.")
    if not np.array_equal(schedule.timestep_map, np.arange(schedule.num_timesteps)):
        raise ValueError(
            "The solvers choose their own levels: pass the full schedule, not a respaced one."
        )
    ab = np.asarray(schedule.alphas_cumprod, np.float64)
    return noise_levels(spacing, ab, int(steps), steps_offset=steps_offset)


def _check_thresholding(thresholding):
    if thresholding is None:
        return None
    ratio, max_value = (float(v) for v in thresholding)
    if not (0.0 < ratio <= 1.0 and max_value >= 1.0):
        raise ValueError(
            f"thresholding must be (ratio in (0, 1], max_value >= 1), got {thresholding!r}."
        )
    return ratio, max_value


def sample_dpmpp(
    apply_fn,
    params,
    schedule: Schedule,
    shape: tuple[int, ...],
    rng: jax.Array,
    *,
    steps: int,
    order: int = 2,
    method: Literal["multistep", "singlestep"] = "multistep",
    spacing: str = "linspace",
    steps_offset: int = 0,
    lower_order_final: bool = True,
    thresholding: tuple[float, float] | None = None,
    y: jax.Array | None = None,
    denoiser: Denoiser = _DENOISER,
    guidance: Guidance = _GUIDANCE,
    x_T: jax.Array | None = None,
    return_trajectory: bool = False,
):
    """DPM-Solver++ (Lu et al. 2022b) in `steps` network calls: "multistep" of order 2 (2M) or 3
    (3M), or "singlestep" of order 2 (2S); `spacing` one of `core.spacing.SPACINGS`;
    `thresholding` = (ratio, max_value) of dynamic thresholding; `lower_order_final` (multistep,
    as diffusers): below 15 steps the second-last step is at most second order (the last step, into
    sigma 0, is always first order). Returns x_0 [shape], or (x_0, xs [steps, *shape]) with
    `return_trajectory`."""
    allowed = {"multistep": (2, 3), "singlestep": (2,)}
    if order not in allowed.get(method, ()):
        raise ValueError(
            f"DPM-Solver++ supports method='multistep' with order 2 or 3 and method='singlestep' "
            f"with order 2, got method={method!r}, order={order!r}."
        )
    levels = _levels(schedule, steps, spacing, steps_offset)
    plan = _plan(method, levels, order, lower_order_final=lower_order_final)
    return _solve(
        apply_fn,
        params,
        plan,
        shape,
        rng,
        schedule.num_timesteps,
        y=y,
        denoiser=denoiser,
        guidance=guidance,
        x_T=x_T,
        thresholding=_check_thresholding(thresholding),
        return_trajectory=return_trajectory,
    )


def sample_unipc(
    apply_fn,
    params,
    schedule: Schedule,
    shape: tuple[int, ...],
    rng: jax.Array,
    *,
    steps: int,
    order: int = 2,
    variant: Literal["bh1", "bh2"] = "bh2",
    spacing: str = "linspace",
    steps_offset: int = 0,
    thresholding: tuple[float, float] | None = None,
    y: jax.Array | None = None,
    denoiser: Denoiser = _DENOISER,
    guidance: Guidance = _GUIDANCE,
    x_T: jax.Array | None = None,
    return_trajectory: bool = False,
):
    """UniPC (Zhao et al. 2023): the UniP predictor of order 2 or 3 and the UniC corrector in
    `steps` network calls, B(h) `variant` "bh1" or "bh2"; the rest as `sample_dpmpp`. Diffusers
    returns NaN from bh1's last step (B(h) = -inf times 0); here that term is 0, giving x_0_hat."""
    if order not in (2, 3) or variant not in ("bh1", "bh2"):
        raise ValueError(
            f"UniPC supports order 2 or 3 and variant 'bh1' or 'bh2', got order={order!r}, "
            f"variant={variant!r}."
        )
    levels = _levels(schedule, steps, spacing, steps_offset)
    plan = _plan("unipc", levels, order, variant=variant)
    return _solve(
        apply_fn,
        params,
        plan,
        shape,
        rng,
        schedule.num_timesteps,
        y=y,
        denoiser=denoiser,
        guidance=guidance,
        x_T=x_T,
        thresholding=_check_thresholding(thresholding),
        return_trajectory=return_trajectory,
    )
