# cuda-attention-probe.py — how fast do cuDNN and FlashAttention-2 (through PyTorch's SDPA) run causal attention
# at B=2, T=2048, 32 query heads, 8 kv heads, head_dim 128, for token-major (bshd) and head-major (bhsd) layouts
# and for GQA vs expanded (MHA) kv? Prints forward and backward ms and TFLOP/s (causal FLOPs).
# Run on a GPU machine: python3 bench/cuda-attention-probe.py. Results: bench/results/cuda-h100-2026-11-27-s2.md.
import torch, time
from torch.nn.attention import sdpa_kernel, SDPBackend
import torch.nn.functional as F
B, T, NH, NKV, HD = 2, 2048, 32, 8, 128
dev = "cuda"
print("torch", torch.__version__, "cudnn", torch.backends.cudnn.version())
fl_f = 4 * B * T * T * NH * HD / 2
def bench(name, backend, layout, gqa_mode):
    torch.manual_seed(0)
    def mk(h):
        if layout == "bshd":
            return torch.randn(B, T, h, HD, device=dev, dtype=torch.bfloat16).transpose(1, 2).requires_grad_()
        return torch.randn(B, h, T, HD, device=dev, dtype=torch.bfloat16).requires_grad_()
    q = mk(NH)
    k = mk(NKV if gqa_mode == "gqa" else NH)
    v = mk(NKV if gqa_mode == "gqa" else NH)
    kw = dict(is_causal=True)
    if gqa_mode == "gqa": kw["enable_gqa"] = True
    try:
        with sdpa_kernel([backend]):
            o = F.scaled_dot_product_attention(q, k, v, **kw)
            do = torch.randn_like(o)
            for _ in range(3):
                o = F.scaled_dot_product_attention(q, k, v, **kw); o.backward(do)
            torch.cuda.synchronize()
            n = 20
            t = time.time()
            for _ in range(n): o = F.scaled_dot_product_attention(q, k, v, **kw)
            torch.cuda.synchronize(); tf = (time.time() - t) / n
            t = time.time()
            for _ in range(n):
                o = F.scaled_dot_product_attention(q, k, v, **kw); o.backward(do)
            torch.cuda.synchronize(); tfb = (time.time() - t) / n - tf
        print(f"{name:34s} fwd {tf*1e3:6.3f} ms {fl_f/tf/1e12:5.0f} TF/s | bwd {tfb*1e3:6.3f} ms {2.5*fl_f/tfb/1e12:5.0f} TF/s")
    except Exception as e:
        print(f"{name:34s} unsupported: {str(e)[:120]}")
for be, bn in [(SDPBackend.CUDNN_ATTENTION, "cudnn"), (SDPBackend.FLASH_ATTENTION, "flash2")]:
    for layout in ["bshd", "bhsd"]:
        for g in ["gqa", "mha"]:
            bench(f"{bn} {layout} {g}", be, layout, g)
