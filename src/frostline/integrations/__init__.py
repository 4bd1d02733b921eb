"""Framework integrations: thin callbacks over :mod:`frostline.schedules`.

Importing this package imports no framework; each submodule imports its own when you import it:

- :mod:`frostline.integrations.lightning`: ``FreezeCallback`` for a (pytorch-)lightning ``Trainer``.
- :mod:`frostline.integrations.transformers`: ``FreezeCallback`` for a Hugging Face ``Trainer``, and name-based
  helpers for transformer models (embeddings, first layers, gradient checkpointing with frozen embeddings).

>>> import subprocess, sys
>>> code = "import sys, frostline.integrations; print('lightning' in sys.modules, 'transformers' in sys.modules)"
>>> subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip()
'False False'
"""
