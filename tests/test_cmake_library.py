"""CMakeLists.txt builds the same operators as a plain shared library (no
Python) for LibTorch programs: a fresh interpreter that loads only that
library, never pycnn, gets working torch.ops.pycnn operators."""
import os
import subprocess
import sys
import textwrap


def test_standalone_library_registers_the_operators(cmake_build, tmp_path):
    operator_library = os.path.join(cmake_build, "libpycnn_ops.so")
    program = textwrap.dedent(
        f"""
        import sys
        import torch
        import torch.nn.functional as F
        torch.ops.load_library({operator_library!r})
        assert "pycnn" not in sys.modules
        ops = torch.ops.pycnn
        torch.manual_seed(0)
        x, w, b = torch.randn(2, 4, 9, 9), torch.randn(6, 2, 3, 3), torch.randn(6)
        torch.testing.assert_close(ops.corr2d(x, w, b, [2, 2], [1, 1], [1, 1], 2), F.conv2d(x, w, b, 2, 1, 1, 2))
        out, idx = ops.max_pool2d(x, [3, 3], [2, 2], [1, 1], [1, 1], True)
        ref, ref_idx = F.max_pool2d(x, 3, 2, 1, 1, True, return_indices=True)
        assert torch.equal(out, ref) and torch.equal(idx, ref_idx)
        torch.testing.assert_close(ops.avg_pool2d(x, [2, 2], [2, 2], [0, 0], False, True, None), F.avg_pool2d(x, 2))
        torch.testing.assert_close(ops.adaptive_avg_pool2d(x, [1, 1]), F.adaptive_avg_pool2d(x, 1))
        mean, var = torch.zeros(4), torch.ones(4)
        torch.testing.assert_close(
            ops.batch_norm(x, None, None, mean, var, False, 0.1, 1e-5)[0], F.batch_norm(x, mean, var))
        print("ok")
        """
    )
    # Run away from the repository so that no ./pycnn can be imported by accident.
    result = subprocess.run([sys.executable, "-c", program], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "ok"
