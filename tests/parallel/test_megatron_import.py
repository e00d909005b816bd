from tests.fresh_process import check_in_fresh_process


def test_megatron_loads_without_torch_compile_and_gives_it_back():
    """In a fresh process (megatron loads once per process): importing our parallel package
    loads megatron-core without importing torch's inductor (its fusions' `torch.compile` is what
    pulled it in), and `torch.compile` is torch's own afterwards."""
    check = ("import sys, torch\n"
             "compile_ = torch.compile\n"
             "import megagoku.parallel, megatron.core\n"
             "assert 'torch._inductor' not in sys.modules, 'megatron imported torch._inductor'\n"
             "assert torch.compile is compile_, 'torch.compile was not given back'\n")
    check_in_fresh_process(check)
