"""Each integration imports without its host codebase (none of them is a dependency)."""

import pytest

from tests.helpers import run_python


@pytest.mark.parametrize("module", ["repdistiller", "mdistiller", "hf"])
def test_imports_without_its_host(module):
    code = ("import sys\n"
            "for host in ('transformers', 'trl', 'mdistiller', 'distiller_zoo', 'yacs'):\n"
            "    sys.modules[host] = None  # (an import of it fails)\n"
            f"import ldrld_kernels.integrations.{module}\n"
            "print('ok')\n")
    result = run_python("-c", code)
    assert result.returncode == 0 and result.stdout == "ok\n", result.stderr
