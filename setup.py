"""Builds bortengine's native module `bortengine._core` from csrc/.

Kernels for each instruction set live in one source (csrc/kernels_isa.inc) compiled once per ISA from a small
wrapper file (csrc/kernels_<isa>.cc) with that file's own flags; nothing is compiled with -march=native, so the
module runs on any x86-64 CPU and picks its kernels at run time (csrc/isa.cc). On other architectures only the
portable kernels are built.
"""
import os
import platform

from pybind11.setup_helpers import Pybind11Extension
from setuptools import setup
from setuptools.command.build_ext import build_ext

IS_X86 = platform.machine().lower() in ("x86_64", "amd64", "i686", "x86")

# Per-file ISA flags. Only the files named here get vector ISA flags.
ISA_FLAGS = {
    "kernels_scalar.cc": [],
    "kernels_avx2.cc": ["-mavx2", "-mfma", "-mf16c"],
    "kernels_avx512.cc": ["-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl", "-mfma", "-mavx2", "-mf16c"],
    "kernels_bf16_avx512bf16.cc": ["-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl", "-mavx512bf16", "-mfma",
                                   "-mavx2", "-mf16c"],
    "kernels_bf16_amx.cc": ["-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl", "-mavx512bf16", "-mamx-tile",
                            "-mamx-bf16", "-mfma", "-mavx2", "-mf16c"],
    "kernels_bf16_avx512.cc": ["-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl", "-mfma", "-mavx2", "-mf16c"],
    "kernels_bf16_avx2.cc": ["-mavx2", "-mfma", "-mf16c"],
    "kernels_bf16_scalar.cc": [],
    "kernels_int8_scalar.cc": [],
    "kernels_int8_avx2.cc": ["-mavx2", "-mfma", "-mf16c"],
    "kernels_int8_amx.cc": ["-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl", "-mavx512vnni", "-mamx-tile",
                            "-mamx-int8", "-mfma", "-mavx2", "-mf16c"],
    "kernels_int8_avx512vnni.cc": ["-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl", "-mavx512vnni", "-mfma",
                                   "-mavx2", "-mf16c"],
}
ISA_SOURCES = ["kernels_scalar.cc", "kernels_int8_scalar.cc", "kernels_bf16_scalar.cc"] + (
    ["kernels_avx2.cc", "kernels_avx512.cc", "kernels_int8_avx2.cc", "kernels_int8_avx512vnni.cc",
     "kernels_bf16_avx2.cc", "kernels_bf16_avx512.cc", "kernels_bf16_avx512bf16.cc", "kernels_bf16_amx.cc", "kernels_int8_amx.cc"] if IS_X86 else []
)
COMMON_SOURCES = ["isa.cc", "kernels_ref.cc", "pool.cc", "ops.cc", "single_ops.cc", "forward.cc", "encoder.cc", "warmer.cc", "bindings.cc"]

COMMON_FLAGS = ["-O3", "-pthread", "-fno-math-errno", "-Wall", "-Wextra", "-Wno-unused-parameter"]
if os.environ.get("BORTENGINE_DEBUG"):
    COMMON_FLAGS = ["-O0", "-g", "-pthread", "-Wall"]


class BuildExtPerFileFlags(build_ext):
    """build_ext that adds ISA flags to the kernel wrapper files only."""

    def build_extension(self, ext):
        original_compile = self.compiler._compile

        def _compile(obj, src, ext_, cc_args, extra_postargs, pp_opts):
            flags = ISA_FLAGS.get(os.path.basename(src), [])
            return original_compile(obj, src, ext_, cc_args, list(extra_postargs) + flags, pp_opts)

        self.compiler._compile = _compile
        try:
            super().build_extension(ext)
        finally:
            self.compiler._compile = original_compile


csrc = lambda names: [os.path.join("csrc", n) for n in names]  # noqa: E731

ext = Pybind11Extension(
    "bortengine._core",
    sources=csrc(COMMON_SOURCES + ISA_SOURCES),
    depends=[os.path.join("csrc", f) for f in os.listdir("csrc") if f.endswith((".h", ".inc"))],
    include_dirs=["csrc"],
    cxx_std=17,
    extra_compile_args=COMMON_FLAGS + (["-DBORTENGINE_X86=1"] if IS_X86 else []),
    extra_link_args=["-pthread"],
)

setup(ext_modules=[ext], cmdclass={"build_ext": BuildExtPerFileFlags})
