"""Benchmarks of synthsets (not part of the installed package).

Run from the repository root, e.g.::

    python -m benchmarks.generation            # generator throughput, share of a training step
    python -m benchmarks.dsa                   # batched DSA vs a per-sample torchvision pipeline
    python -m benchmarks.distill_step          # Distiller step time vs a naive implementation
    python -m benchmarks.loader                # DataLoader per-item path vs SyntheticDataset.loader()

Every script prints markdown tables, writes JSON (``--json PATH``, default
``benchmarks/results/<name>.json``), has ``--tiny`` for a seconds-long smoke run and
``--device`` (default: CUDA when present, else CPU). See ``benchmarks/README.md``.
"""
