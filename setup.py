"""Build of the C matching engine (`matching_native._book`).

`pip install -e .` compiles it in place. Switches (environment variables):
  MATCHING_NATIVE_SANITIZE=address   build with AddressSanitizer + UBSan
  MATCHING_NATIVE_DEBUG=1            -O0 -g, asserts on
"""
import os

from setuptools import Extension, setup

sanitize = os.environ.get("MATCHING_NATIVE_SANITIZE", "")
debug = os.environ.get("MATCHING_NATIVE_DEBUG") == "1"

compile_args = ["-std=c11", "-Wall", "-Wextra", "-Werror=implicit-function-declaration"]
link_args = []
if debug or sanitize:
    compile_args += ["-O0", "-g", "-UNDEBUG"]
else:
    compile_args += ["-O3", "-DNDEBUG"]
if sanitize:
    flag = f"-fsanitize={sanitize},undefined"
    compile_args += [flag, "-fno-omit-frame-pointer"]
    link_args += [flag]

setup(
    ext_modules=[
        Extension(
            "matching_native._book",
            sources=["matching_native/_book.c"],
            extra_compile_args=compile_args,
            extra_link_args=link_args,
        )
    ]
)
