"""Maps the product's top-level folders onto import packages.

The repository layout is fixed (daemon/, client/, tools/), but the import names are
``dualbladed`` (the daemon), ``dualblade`` (the SDK) and ``dualblade_tools`` (dbctl and the
benchmarks). pyproject.toml cannot express "rename a folder and keep finding its
subpackages", so this file does only that.
"""

from setuptools import find_packages, setup

ROOTS = {"dualbladed": "daemon", "dualblade": "client", "dualblade_tools": "tools"}

packages: list[str] = []
for name, folder in ROOTS.items():
    packages.append(name)
    packages.extend(f"{name}.{sub}" for sub in find_packages(folder))

setup(packages=packages, package_dir=ROOTS, package_data={"dualblade": ["v1/*.pyi"]})
