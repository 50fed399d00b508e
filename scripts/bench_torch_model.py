#!/usr/bin/env python3
"""PyTorch baseline for pgolf's speed comparison (issue 4).

The same architecture as model/model_ref.h (U-Net skips with sigmoid gates, depth
recurrence, parallel residuals, GQA with QK-norm + partial RoPE + q gain, value residual,
XSA, LeakyReLU(0.5)^2 MLP, BigramHash, SmearGate, tied softcapped head), written plainly
in PyTorch with torch.compile and scaled_dot_product_attention, trained with Muon
(Newton-Schulz in bf16, batched over same-shape matrices) on matrices and Adam on the rest,
with pgolf's record-preset optimizer settings (Nesterov momentum warming up 0.92 -> 0.99,
decoupled weight decay, global grad-norm clip, LR warmup and linear warmdown). It measures
tokens/s on one GPU at the shape given by the flags. It is a benchmark only: pgolf never
depends on Python.

Tokens are random unless --data names a folder of challenge shards: then the steps read the
train shards in order as pgolf's loader does (each micro-step takes the next seqs*seq+1 tokens,
inputs and targets offset by one), so the loss curve compares with `pgolf train` on the same
folder (scripts/bench_loss_vs_torch.sh). Every step trains, the --warmup ones included; the
timing is the median of the last --steps.

Run on a GPU machine:  python3 scripts/bench_torch_model.py --steps 30
Ends with: RESULT pytorch_tokens_per_s=... pytorch_peak_mem_gib=... pytorch_loss=... device=...
"""
import argparse, array, glob, math, os, struct, time
import torch
import torch.nn as nn
import torch.nn.functional as F

p = argparse.ArgumentParser()
p.add_argument("--vocab", type=int, default=8192)
p.add_argument("--dim", type=int, default=512)
p.add_argument("--layers", type=int, default=10)
p.add_argument("--heads", type=int, default=8)
p.add_argument("--kv-heads", type=int, default=4)
p.add_argument("--mlp-mult", type=int, default=4)
p.add_argument("--rope-dims", type=int, default=16)
p.add_argument("--bigram-buckets", type=int, default=10240)
p.add_argument("--bigram-dim", type=int, default=128)
p.add_argument("--xsa-last", type=int, default=4)
p.add_argument("--parallel-from", type=int, default=7)
p.add_argument("--recur", type=str, default="3,5,2", help="start,end,repeats; 'off' to disable")
p.add_argument("--seq", type=int, default=2048)
p.add_argument("--micro-seqs", type=int, default=16, help="sequences per forward pass")
p.add_argument("--batch-tokens", type=int, default=786432 // 8, help="tokens per optimizer step")
p.add_argument("--steps", type=int, default=30)
p.add_argument("--warmup", type=int, default=5, help="untimed steps (compilation)")
p.add_argument("--no-compile", action="store_true")
p.add_argument("--profile", action="store_true", help="after timing, print one step's CUDA kernels by time")
p.add_argument("--data", type=str, default="", help="folder of challenge shards (fineweb_train_*.bin)")
p.add_argument("--log-every", type=int, default=0, help="print the loss every N steps (0: never)")
p.add_argument("--matrix-lr", type=float, default=0.022)
p.add_argument("--embed-lr", type=float, default=0.03)
p.add_argument("--scalar-lr", type=float, default=0.02)
p.add_argument("--muon-wd", type=float, default=0.095)
p.add_argument("--muon-momentum", type=str, default="0.92,0.99,1500", help="start,end,warmup steps")
p.add_argument("--grad-clip", type=float, default=0.3)
p.add_argument("--warmup-steps", type=int, default=20)
p.add_argument("--warmdown-frac", type=float, default=0.72)
args = p.parse_args()

dev = "cuda"
torch.manual_seed(0)
torch.backends.cuda.matmul.allow_tf32 = True
hd = args.dim // args.heads


def rms(x):
    return F.rms_norm(x, (x.size(-1),), eps=1e-6)


class Block(nn.Module):
    def __init__(self, l):
        super().__init__()
        D, H, K = args.dim, args.heads, args.kv_heads
        self.l = l
        self.wq = nn.Linear(D, H * hd, bias=False)
        self.wk = nn.Linear(D, K * hd, bias=False)
        self.wv = nn.Linear(D, K * hd, bias=False)
        self.wo = nn.Linear(H * hd, D, bias=False)
        self.fc = nn.Linear(D, args.mlp_mult * D, bias=False)
        self.proj = nn.Linear(args.mlp_mult * D, D, bias=False)
        self.attn_scale = nn.Parameter(torch.ones(D))
        self.mlp_scale = nn.Parameter(torch.ones(D))
        self.resid_mix = nn.Parameter(torch.stack([torch.ones(D), torch.zeros(D)]))
        self.q_gain = nn.Parameter(torch.full((H,), 5.25))
        self.v_mix = nn.Parameter(torch.tensor([0.5, 0.5]))
        self.s = 1.0 / math.sqrt(l + 1)
        self.xsa = l >= args.layers - args.xsa_last
        self.parallel = l >= args.parallel_from

    def rope(self, x, cos, sin):
        r = args.rope_dims // 2
        x1, x2, rest = x[..., :r], x[..., r:2 * r], x[..., 2 * r:]
        # ops_ref.h's convention (the records'): x1' = x1 cos + x2 sin, x2' = -x1 sin + x2 cos
        return torch.cat([x1 * cos + x2 * sin, -x1 * sin + x2 * cos, rest], dim=-1)

    def mlp(self, h):
        return self.proj(F.leaky_relu(self.fc(h), 0.5).square())

    def attn(self, h, v_first, cos, sin):
        B, T, _ = h.shape
        q = rms(self.wq(h).view(B, T, args.heads, hd))
        k = rms(self.wk(h).view(B, T, args.kv_heads, hd))
        v = self.wv(h).view(B, T, args.kv_heads, hd)
        q = self.rope(q, cos, sin) * self.q_gain.to(q.dtype)[None, None, :, None]
        k = self.rope(k, cos, sin)
        if v_first is None:
            v_first = v
        else:
            v = self.v_mix[0] * v + self.v_mix[1] * v_first
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                           is_causal=True, enable_gqa=True).transpose(1, 2)
        if self.xsa:
            g = args.heads // args.kv_heads
            yg = y.reshape(B, T, args.kv_heads, g, hd)
            vn = F.normalize(v, dim=-1).unsqueeze(-2)
            y = (yg - (yg * vn).sum(-1, keepdim=True) * vn).reshape(B, T, args.heads, hd)
        return self.wo(y.reshape(B, T, -1)), v_first

    def forward(self, x, x0, v_first, cos, sin):
        mix, sa, sm = (p.to(x.dtype) for p in (self.resid_mix, self.attn_scale, self.mlp_scale))
        x_in = mix[0] * x + mix[1] * x0
        h = rms(x_in) * self.s
        a, v_first = self.attn(h, v_first, cos, sin)
        if self.parallel:
            return x_in + sa * a + sm * self.mlp(h), v_first
        x_mid = x_in + sa * a
        return x_mid + sm * self.mlp(rms(x_mid) * self.s), v_first


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        D = args.dim
        self.tok_emb = nn.Embedding(args.vocab, D)
        nn.init.normal_(self.tok_emb.weight, std=0.005)
        self.bigram = nn.Embedding(args.bigram_buckets, args.bigram_dim)
        nn.init.normal_(self.bigram.weight, std=0.005)
        self.bigram_proj = nn.Linear(args.bigram_dim, D, bias=False)
        self.bigram_scale = nn.Parameter(torch.tensor(0.05))
        self.smear = nn.Parameter(torch.zeros(D))
        self.blocks = nn.ModuleList(Block(l) for l in range(args.layers))
        sched = list(range(args.layers))
        if args.recur != "off":
            a, b, r = map(int, args.recur.split(","))
            sched = list(range(b + 1)) + list(range(a, b + 1)) * (r - 1) + list(range(b + 1, args.layers))
        self.sched = sched
        self.n_enc = len(sched) // 2
        self.skip_w = nn.Parameter(torch.ones(self.n_enc, D))
        self.skip_g = nn.Parameter(torch.zeros(self.n_enc, D))
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.orthogonal_(m.weight)
        for b in self.blocks:
            b.wo.weight.data /= math.sqrt(2 * args.layers)
            b.proj.weight.data /= math.sqrt(2 * args.layers)
        r = args.rope_dims // 2
        inv = 10000.0 ** (-torch.arange(r, dtype=torch.float32) * 2 / args.rope_dims)
        ang = torch.arange(args.seq, dtype=torch.float32)[:, None] * inv[None]
        self.register_buffer("cos", ang.cos()[None, :, None, :], persistent=False)
        self.register_buffer("sin", ang.sin()[None, :, None, :], persistent=False)

    def forward(self, idx, tgt):
        B, T = idx.shape
        # The residual stream is bf16, as in the records' train_gpt.py (the model cast to bf16,
        # the fp32 per-channel weights cast to the stream's dtype where they meet it) and in pgolf.
        x = self.tok_emb(idx).bfloat16()
        prev = torch.cat([torch.full_like(idx[:, :1], -1), idx[:, :-1]], 1)
        h = ((36313 * idx) ^ (27191 * prev)) % (args.bigram_buckets - 1)
        h = torch.where(prev < 0, args.bigram_buckets - 1, h)
        x = x + self.bigram_scale * self.bigram_proj(self.bigram(h))
        x = rms(x)
        g = torch.sigmoid(self.smear).to(x.dtype)
        x = (1 - g) * x + g * F.pad(x[:, :-1], (0, 0, 1, 0))
        x0, v_first, skips = x, None, []
        cos, sin = self.cos[:, :T].to(x.dtype), self.sin[:, :T].to(x.dtype)
        for i, l in enumerate(self.sched):
            if i >= self.n_enc and skips:
                j = i - self.n_enc
                gg = torch.sigmoid(self.skip_g[j]).to(x.dtype)
                x = gg * x + (1 - gg) * self.skip_w[j].to(x.dtype) * skips.pop()
            x, v_first = self.blocks[l](x, x0, v_first, cos, sin)
            if i < self.n_enc:
                skips.append(x)
        logits = rms(x) @ self.tok_emb.weight.to(x.dtype).T
        logits = 30.0 * torch.tanh(logits.float() / 30.0)
        return F.cross_entropy(logits.view(-1, args.vocab), tgt.reshape(-1))


@torch.compile
def newton_schulz(G):
    a, b, c = 3.4445, -4.7750, 2.0315
    X = G.bfloat16()
    tall = X.size(-2) > X.size(-1)
    if tall:
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    for _ in range(5):
        A = X @ X.mT
        X = a * X + (b * A + c * A @ A) @ X
    return X.mT if tall else X


class Shards:
    """The train shards end to end, read in a cycle like pgolf's TokenStream."""

    def __init__(self, folder):
        files = sorted(glob.glob(os.path.join(folder, "fineweb_train_*.bin")))
        if not files:
            raise SystemExit(f"bench_torch_model.py: no fineweb_train_*.bin in {folder}")
        tokens = array.array("H")
        for f in files:
            with open(f, "rb") as fh:
                magic, version, count = struct.unpack("<3i", fh.read(1024)[:12])
                body = fh.read(2 * count)
            if magic != 20240520 or version != 1 or len(body) != 2 * count:
                raise SystemExit(f"bench_torch_model.py: {f} is not a whole challenge shard")
            tokens.frombytes(body)  # little-endian, as the shards and the GPU machines are
        self.tokens = torch.tensor(tokens, dtype=torch.int64, device=dev)
        if int(self.tokens.max()) >= args.vocab:
            raise SystemExit(f"bench_torch_model.py: token {int(self.tokens.max())} >= --vocab {args.vocab}")
        self.pos = 0

    def take(self, n):
        parts, k = [], 0
        while k < n:
            m = min(n - k, len(self.tokens) - self.pos)
            parts.append(self.tokens[self.pos:self.pos + m])
            k, self.pos = k + m, (self.pos + m) % len(self.tokens)
        return torch.cat(parts)


model = Model().to(dev)
mats = [p for n, p in model.named_parameters() if p.ndim == 2 and "emb" not in n and "bigram." not in n and "skip" not in n and "resid_mix" not in n]
mat_ids = {id(p) for p in mats}
embeds = [model.tok_emb.weight, model.bigram.weight]
emb_ids = {id(p) for p in embeds}
rest = [p for p in model.parameters() if id(p) not in mat_ids and id(p) not in emb_ids]
adam = torch.optim.Adam([{"params": embeds, "lr": args.embed_lr}, {"params": rest, "lr": args.scalar_lr}],
                        betas=(0.9, 0.95), eps=1e-8, fused=True)
base_lrs = [g["lr"] for g in adam.param_groups]
# Muon on banks: same-shape matrices stacked, so one batched Newton-Schulz serves each shape
# (the parameter banking of today's best PyTorch entries), not a Python loop over matrices.
banks = {}
for p_ in mats:
    banks.setdefault(tuple(p_.shape), []).append(p_)
banks = [(ps, torch.zeros((len(ps),) + shape, device=dev)) for shape, ps in banks.items()]
fwd = model if args.no_compile else torch.compile(model)
accum = max(1, args.batch_tokens // (args.seq * args.micro_seqs))
step_tokens = accum * args.micro_seqs * args.seq
n_params = sum(p.numel() for p in model.parameters())
total_steps = args.warmup + args.steps
shards = Shards(args.data) if args.data else None
mu_start, mu_end, mu_warmup = (float(v) for v in args.muon_momentum.split(","))


def lr_scale(s):
    """pgolf's model/schedule.cpp with the step count as progress."""
    f = (s + 1) / args.warmup_steps if s < args.warmup_steps else 1.0
    prog, wd = s / total_steps, args.warmdown_frac
    if wd > 0 and prog > 1 - wd:
        f *= (1 - prog) / wd
    return f


def step(s):
    loss_sum = 0.0
    for _ in range(accum):
        n = args.micro_seqs * args.seq
        if shards:
            chunk = shards.take(n + 1)
            inp, tgt = chunk[:-1].view(args.micro_seqs, args.seq), chunk[1:].view(args.micro_seqs, args.seq)
        else:
            idx = torch.randint(0, args.vocab, (args.micro_seqs, args.seq + 1), device=dev)
            inp, tgt = idx[:, :-1], idx[:, 1:]
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = fwd(inp, tgt) / accum
        loss.backward()
        loss_sum += loss.detach()
    f = lr_scale(s)
    mu = mu_start + (mu_end - mu_start) * min(1.0, s / mu_warmup) if mu_warmup > 0 else mu_end
    with torch.no_grad():
        if args.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip, foreach=True)
        lr = args.matrix_lr * f
        for ps, m in banks:
            g = torch.stack([p_.grad for p_ in ps])
            m.mul_(mu).add_(g)
            u = newton_schulz(g + mu * m).float()
            torch._foreach_mul_(ps, 1 - lr * args.muon_wd)
            torch._foreach_add_(ps, u.unbind(0), alpha=-lr * max(1, ps[0].size(0) / ps[0].size(1)) ** 0.5)
    for g, base in zip(adam.param_groups, base_lrs):
        g["lr"] = base * f
    adam.step()
    model.zero_grad(set_to_none=True)
    return loss_sum


times = []
for s in range(total_steps):
    if s == args.warmup:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    loss = step(s)
    if s >= args.warmup:
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    if args.log_every and ((s + 1) % args.log_every == 0 or s == 0):
        print(f"step {s + 1} loss {float(loss):.6f}", flush=True)
if args.profile:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        step(total_steps - 1)
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=40, max_name_column_width=90))
times.sort()
med = times[len(times) // 2]
peak = torch.cuda.max_memory_allocated() / 2**30
print(f"params={n_params} effective_layers={len(model.sched)} step_tokens={step_tokens} accum={accum} "
      f"median_step_ms={med*1e3:.1f}")
print(f"RESULT pytorch_tokens_per_s={step_tokens/med:.0f} pytorch_peak_mem_gib={peak:.2f} "
      f"pytorch_loss={float(loss):.4f} device={torch.cuda.get_device_name().replace(' ', '_')}")
