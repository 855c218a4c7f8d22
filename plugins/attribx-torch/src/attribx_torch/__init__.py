"""attribx's PyTorch backend, a plugin registered through attribx's public hooks only.

It translates ``torch.nn.Module`` objects (``translate``) and ``torch.export`` programs, objects or ``.pt2``
files (``export``), into the attribx graph, and runs any graph with torch's kernels on CPU or GPU (``engine``). Importing attribx does not import torch; this
package imports it only when a torch model or the torch engine is used.
"""
__version__ = "0.1.0"
