"""Backend-specific choices in one layer.

    allocator.py      glibc malloc settings for XLA:CPU (process-wide)
    compile_cache.py  JAX's persistent compilation cache; the run's start clock and compile time
    devices.py        per-core single-threaded CPU devices and the rule that picks them
    logs.py           third-party log and traceback filters (process-wide)
    install.py        `install_process_settings()`: what the CLI installs once per process
    lowering_rule.py  `lowering_for(config)`: the layer choices (fusion barriers, rows_dot, scan
                      unroll, convolution kernels) a task passes to its models, made ahead of
                      tracing from a fixed rule and the kernel table
    kernel_table.py   the JSON kernel table `jaxnets tune` writes (tune.py) and runs read

Process-wide settings are installed by the CLI entry point only; constructing a `Trainer` in a
notebook changes nothing global. Models and layers never import this package: they receive a
`jaxnets.nn.lowering.Lowering` as an argument.
"""
