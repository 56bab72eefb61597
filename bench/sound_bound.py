"""Cost of the sound certification bound vs converged power iteration, at paper scale.

    python bench/sound_bound.py [--L 18] [--W 256] [--model path/to/trained.keras ...]

Builds GloroLiResNet(L, W) for 32×32 inputs (16×16 features), perturbs its residual kernels to
look trained (V·30, random β) and times `lipschitz_bound("sound")` (once, cold) and
`converge_bounds()` (500 power iterations or tolerance 1e-6); prints K_sound / K_power. For each
`--model` (a saved GloroModel, e.g. from gloro-train) it prints the same ratio.
"""
import argparse
import json
import os
import time

import keras
import numpy as np


def measure(model):
    t = time.perf_counter()
    k_sound = model.lipschitz_bound("sound")
    t_sound = time.perf_counter() - t
    t = time.perf_counter()
    k_power = model.converge_bounds()
    t_power = time.perf_counter() - t
    return dict(k_sound=k_sound, k_power=k_power, ratio=k_sound / k_power, sound_s=t_sound, power_s=t_power)


def main():
    import gloro_keras as gk

    p = argparse.ArgumentParser()
    p.add_argument("--L", type=int, default=18)
    p.add_argument("--W", type=int, default=256)
    p.add_argument("--model", action="append", default=[])
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "sound_bound.json"))
    a = p.parse_args()
    keras.utils.set_random_seed(0)
    model = gk.GloroLiResNet(L=a.L, W=a.W, num_classes=10, input_shape=(32, 32, 3))
    for layer in model.network.layers:
        if hasattr(layer, "residual_kernel"):
            layer.residual_kernel.assign(layer.residual_kernel * 30.0)
            layer.beta.assign(np.random.uniform(0.5, 1.5, layer.beta.shape).astype("float32"))
    rows = {f"GloroLiResNet L{a.L}W{a.W} (perturbed init)": measure(model)}
    for path in a.model:
        rows[path] = measure(keras.saving.load_model(path))
    print(f"load average: {os.getloadavg()}")
    for name, r in rows.items():
        print(f"{name}: K_sound {r['k_sound']:.6g} ({r['sound_s']:.1f} s)  K_power {r['k_power']:.6g} "
              f"({r['power_s']:.1f} s)  ratio {r['ratio']:.5f}")
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(dict(rows=rows, load_average=os.getloadavg()), f, indent=2)


if __name__ == "__main__":
    main()
