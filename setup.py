"""tvm-mpq: hardware-aware mixed-precision quantization for RISC-V on Apache TVM."""
from setuptools import find_packages, setup

setup(
    name="tvm-mpq",
    version="0.1.0",
    description="Hardware-aware mixed-precision quantization for RISC-V on Apache TVM",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=["tvm_mpq", "tvm_mpq.*"]),
    package_data={"tvm_mpq": ["measure/harness/*", "zoo/weights/*"]},
    install_requires=[
        "apache-tvm>=0.27,<0.28",
        # 0.1.15.post2 segfaults in ToJSONGraph (MetaSchedule's JSON database).
        "apache-tvm-ffi==0.1.14.post1",
        "torch==2.13.0",
        "numpy",
        "xgboost-cpu",
        "psutil",
        # undeclared runtime needs of TVM's builder/runner and RPC tracker
        "cloudpickle",
        "tornado",
        "spike",
        "pymoo",
        "matplotlib",
        "tqdm",
        "scipy",
        "pytest",
        "hypothesis",
    ],
    extras_require={"dev": ["ruff", "pytest-timeout"]},
    entry_points={"console_scripts": ["tvm-mpq=tvm_mpq.cli:main"]},
)
