"""Example plugin of rs-sscl-bench: the method ``dcl`` and the dataset ``toy_fields``.

Installed, it registers both through its entry points; from a source folder on the path,
``python -m bench --plugin bench_example_plugin.dcl ...`` does the same for one module.
"""
