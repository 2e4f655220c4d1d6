"""Builds the optional C++/CUDA scoring ops (``proxies._C``); everything else lives in pyproject.toml.

The CPU ops are always built when ``csrc/`` has sources. The CUDA ops are added when a GPU is visible or
``FORCE_CUDA=1`` (then ``TORCH_CUDA_ARCH_LIST`` must name the target, e.g. ``9.0``, since there is no GPU to ask).
``SKIP_EXTENSION=1`` builds nothing: the pure-torch and numba backends still work.
"""

import glob
import os

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _extensions():
    if os.environ.get("SKIP_EXTENSION") == "1":
        print("[memunlearn] SKIP_EXTENSION=1: building no C++/CUDA ops")
        return [], {}
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")) + glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    if not sources:
        print("[memunlearn] csrc/ has no sources: building no C++/CUDA ops")
        return [], {}

    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    force_cuda = os.environ.get("FORCE_CUDA") == "1"
    gpu = torch.cuda.is_available()
    with_cuda = CUDA_HOME is not None and (gpu or force_cuda)
    if force_cuda and CUDA_HOME is None:
        print("[memunlearn] FORCE_CUDA=1 but no CUDA toolkit was found (set CUDA_HOME): building the CPU ops only")
    if with_cuda and not gpu and not os.environ.get("TORCH_CUDA_ARCH_LIST"):
        # torch's build helper would ask the (absent) GPU for its architecture and fail with an IndexError
        raise SystemExit("[memunlearn] FORCE_CUDA=1 without a visible GPU needs the target architectures, "
                         "e.g. TORCH_CUDA_ARCH_LIST=9.0")
    openmp = ["-fopenmp"]
    # -ffast-math lets GCC call glibc's vector exp/log (libmvec) in the `omp simd` loops and fuse the polynomial of
    # csrc/cpu/simd.h into FMAs; the kernels never rely on NaN or infinity (inputs are checked finite before they
    # reach a backend). The ops are built from source where they run, so they may use the host's vector units (as
    # numba's JIT does); MEMUNLEARN_PORTABLE=1 builds for the baseline x86-64 / aarch64 instead, and -Wno-psabi
    # silences GCC's note that 64-byte vectors pass differently without AVX-512 (they never cross a file).
    arch = [] if os.environ.get("MEMUNLEARN_PORTABLE") == "1" else ["-march=native"]
    extra_compile_args = {"cxx": ["-O3", "-std=c++20", "-ffast-math", "-Wno-psabi", *arch, *openmp]}
    define_macros = []
    if with_cuda:
        sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
        define_macros.append(("WITH_CUDA", None))
        # the CUDA 13 wheels of torch ship the CUDA headers (CCCL) under site-packages/nvidia/cu13/include
        site = os.path.dirname(os.path.dirname(os.path.abspath(torch.__file__)))
        nvidia_includes = sorted(glob.glob(os.path.join(site, "nvidia", "cu[0-9]*", "include")))
        extra_compile_args["nvcc"] = ["-O3", "--use_fast_math", "-std=c++20", *(f"-I{d}" for d in nvidia_includes)]
        extension = CUDAExtension
    else:
        extension = CppExtension
    why = "GPU visible" if gpu else ("FORCE_CUDA=1" if force_cuda else "no GPU, no FORCE_CUDA")
    ops = "CPU + CUDA" if with_cuda else "CPU"
    arch_list = f"; TORCH_CUDA_ARCH_LIST={os.environ.get('TORCH_CUDA_ARCH_LIST')}" if with_cuda else ""
    print(f"[memunlearn] building proxies._C with {ops} ops ({why}; CUDA_HOME={CUDA_HOME}{arch_list}; "
          f"{'portable' if not arch else 'native'} CPU code)")
    ext = extension(
        "proxies._C",
        sources,
        include_dirs=[os.path.join(HERE, "csrc")],
        define_macros=define_macros,
        extra_compile_args=extra_compile_args,
        extra_link_args=openmp,
    )
    return [ext], {"build_ext": BuildExtension.with_options(no_python_abi_suffix=True)}


ext_modules, cmdclass = _extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
