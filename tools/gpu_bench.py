"""GPU figures in one process. `--part capture`: Discriminator Flow's and the GAN's training iterations replayed from CUDA
graphs (`cuda_graph`) against the uncaptured loops, on the 5 Gaussians (GPM's official configs, Discriminator Flow's
`--compare` too) and on images (Discriminator Flow's image presets: digits, MNIST-sized 28x28 arrays; the GAN on digits). `--part methods`: every registered method on its `gpu` preset on the
5 Gaussians and on digits with its default preset for images. Each row has the GPU's utilisation while training;
prints one JSON object per line and appends it to --out.

    python tools/gpu_bench.py --part all --out gpu_bench.jsonl
"""
import argparse, json, tempfile, time
import numpy as np, torch
from gpm_nb.cli import bench, bench_compare
from gpm_nb.gpm import all_methods, get_method

def timed(method, data, preset, seconds, n_samples, **kw):
    "`bench` with as many iterations as fill about `seconds` (NVML's utilisation needs a few seconds to read)."
    probe = bench(method, data, preset, iters=5, n_samples=min(n_samples, 500), **kw)
    iters = max(10, int(seconds * probe['train_it_per_s']))
    return bench(method, data, preset, iters=iters, n_samples=n_samples, **kw)

def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--out', default='gpu_bench.jsonl'); ap.add_argument('--seconds', type=float, default=3.)
    ap.add_argument('--part', default='all', choices=('capture', 'methods', 'all'))
    a = ap.parse_args()
    if not torch.cuda.is_available(): raise SystemExit("gpu_bench: no CUDA device is visible; this benchmark times CUDA graphs")
    img28 = f'{tempfile.mkdtemp()}/img28.npy'   # MNIST's shape and range, random pixels: the speed does not depend on them
    np.save(img28, np.random.default_rng(0).random((10_000, 1, 28, 28), dtype=np.float32))
    rows = []
    if a.part in ('capture', 'all'):
        rows.append(lambda: dict(bench='compare', gpu=torch.cuda.get_device_name(), torch=torch.__version__,
                                 **bench_compare('gaussians5', 'gpu', iters=30, n_samples=10_000)))
        for method, data, preset, n in (('discr_flow', 'gaussians5', 'gpu', 10_000), ('discr_flow', 'digits', 'digits', 2000),
                                        ('discr_flow', img28, 'mnist', 2000), ('gan', 'gaussians5', 'gpu', 10_000), ('gan', 'digits', 'cpu', 2000)):
            for graph in (False, True):
                rows.append(lambda method=method, data=data, preset=preset, n=n, graph=graph: dict(
                    bench='train', data=data if data != img28 else 'random 28x28', **timed(method, data, preset, a.seconds, n, cuda_graph=graph)))
    if a.part in ('methods', 'all'):
        for m in all_methods():
            for data, preset in (('gaussians5', 'gpu'), ('digits', get_method(m).default_preset((1, 8, 8)))):
                rows.append(lambda m=m, data=data, preset=preset: dict(bench='method', data=data, **timed(m, data, preset, a.seconds / 2, 2000)))
    for row in rows:
        t0 = time.perf_counter()
        try: r = row()
        except Exception as e: r = dict(error=f"{type(e).__name__}: {e}")
        r['wall_s'] = round(time.perf_counter() - t0, 1)
        line = json.dumps(r); print(line, flush=True)
        with open(a.out, 'a') as f: f.write(line + '\n')

if __name__ == '__main__': main()
