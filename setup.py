"""Builds the C++ extension ``kdprune._C`` from every source in ``csrc/``.

Each ``csrc/*.cpp`` registers its ops with ``TORCH_LIBRARY_FRAGMENT(kdprune, m)``, so adding a kernel
never touches a central bindings file; ``csrc/module.cpp`` only gives Python a module to import.
``kernels/`` (Triton) is installed as the subpackage ``kdprune.kernels`` and ``benchmarks/`` (the scripts
``kdprune bench`` runs) as ``kdprune.benchmarks``.
"""
import glob
import os

from setuptools import find_packages, setup
from torch.utils.cpp_extension import BuildExtension, CppExtension

here = os.path.dirname(os.path.abspath(__file__))
sources = sorted(os.path.relpath(p, here) for p in glob.glob(os.path.join(here, "csrc", "*.cpp")))

# No -std flag: torch's BuildExtension adds the standard its own headers need (C++17 on older
# releases, C++20 on torch 2.14), so the extension builds against the torch it is built with.
extra_compile_args = ["-O3", "-fopenmp"]
if os.environ.get("KDPRUNE_NATIVE_ARCH", "0") == "1":
    extra_compile_args.append("-march=native")

packages = find_packages(include=["kdprune", "kdprune.*"]) + ["kdprune.kernels", "kdprune.benchmarks"]

setup(
    packages=packages,
    package_dir={"kdprune.kernels": "kernels", "kdprune.benchmarks": "benchmarks"},
    package_data={"kdprune.loss": ["alpha_fit.json"]},
    ext_modules=[
        CppExtension(
            "kdprune._C",
            sources,
            include_dirs=[os.path.join(here, "csrc")],
            extra_compile_args=extra_compile_args,
            extra_link_args=["-fopenmp"],
        )
    ],
    cmdclass={"build_ext": BuildExtension},
)
