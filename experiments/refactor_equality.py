"""Numbers before and after a refactor: run a reduced comparison (every default solver, three
exact targets), exact and Hutchinson likelihoods, the variational bound, encode, and the
torchsde / pc / heun-with-churn samplers on four SDEs with whatever scoresde is on sys.path,
and dump every number to JSON, so two versions can be compared bit for bit:

    PYTHONPATH=/path/to/old python experiments/refactor_equality.py old.json
    python experiments/refactor_equality.py new.json     # then compare the two files

(Used for the seams refactor: 0 differing floats. Works with the pre-refactor layout too.)
"""

import json
import sys

import torch

import scoresde as sd

try:
    from scoresde.evaluation.compare import builtin_target, compare
except ImportError:  # the layout before the seams refactor
    from scoresde.compare import builtin_target, compare

torch.set_num_threads(1)
out = {}
for tgt, sde in (("eight_gaussians", sd.VPSDE()), ("mixture2d", sd.VPSDE()), ("eight_gaussians", sd.VESDE())):
    comp = compare(builtin_target(tgt, sde), None, [10, 21, 50], n=300, seed=0,
                   out_dir=None, progress=False, floor_repeats=3)
    out[f"{tgt}/{type(sde).__name__}"] = {"floors": comp.floors,
        "rows": [{k: v for k, v in r.items() if k not in ("wall_s", "message")} for r in comp.rows]}
gm = sd.analytic.GaussianMixture.eight_gaussians()
for sde in (sd.VPSDE(), sd.SubVPSDE(), sd.VESDE(), sd.VPSDE.cosine()):
    m = gm.as_model(sde)
    x = gm.sample(64, torch.Generator().manual_seed(1)).double()
    r = sd.log_likelihood(m, x)
    h = sd.log_likelihood(m, x, divergence="hutchinson", n_probes=3,
                          generator=torch.Generator().manual_seed(2))
    vb = sd.variational_bound(m, x, n_samples=16, generator=torch.Generator().manual_seed(3))
    enc = sd.pf_ode_encode(m, x)
    ts = sd.sample(m, solver="torchsde", nfe=21, x_T=x, generator=torch.Generator().manual_seed(4))
    pc = sd.sample(m, solver="pc", nfe=21, x_T=x, generator=torch.Generator().manual_seed(4))
    hc = sd.sample(m, solver="heun", churn=5.0, nfe=20, x_T=x, generator=torch.Generator().manual_seed(4))
    out[type(sde).__name__] = {"logp": r.logp.tolist(), "nfe": r.nfe, "hutch": h.logp.tolist(),
        "vb": vb.bound.tolist(), "z": enc.z.flatten().tolist(), "ts": ts.x.flatten().tolist(),
        "pc": pc.x.flatten().tolist(), "heun_churn": hc.x.flatten().tolist()}
json.dump(out, open(sys.argv[1], "w"))
print("done")
