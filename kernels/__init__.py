"""Triton GPU kernels, installed as ``kdprune.kernels``. Importing this needs triton; the rest of
kdprune never imports it unless a CUDA tensor asks for the Triton backend."""
