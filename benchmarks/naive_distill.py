"""A straightforward, research-code-style DiM distillation loop: the baseline of
``benchmarks.distill_step``.

It has the same maths as :class:`synthsets.distill.Distiller` (the same Generator,
Discriminator, DSA and pool models, the same losses, optimisers, seeds and order of
random draws) but is written the way research code often is:

* the models are built from stock torch layers: ``nn.AvgPool2d`` in the pool models
  (in a plain ``nn.Sequential``), ``nn.LayerNorm`` and ``nn.Conv2d`` in the
  discriminator, ``nn.Conv2d`` and ``nn.ConvTranspose2d`` in the generator, where the
  library has its faster drop-ins ``AvgPool2x2`` (and ConvNet's ``ReLUPoolSequential``),
  ``SampleLayerNorm``, ``PenaltyConv2d`` and the generator's CPU-fast convolutions
  (``benchmarks._common.stock_layers``), and they stay in the standard memory layout;

* the real training set stays on the CPU and each batch is indexed there, then copied
  to the device;
* noise, gradient-penalty mixing weights and batch indices are drawn on the CPU and
  moved to the device;
* small tensors (normalisation constants, ``grad_outputs``, one-hot codes) are
  re-created at every step;
* the discriminator sees the real and the fake batch in separate forward passes;
* every logged loss (the same ones the library logs: ``d_loss``, ``gp``, ``wdist``,
  ``pool_ce``, ``g_loss``, ``match``) is read with ``.item()`` at every step, a host
  synchronisation on CUDA, and averaged in Python.

It is not made slower than that on purpose: no extra syncs, copies or recomputation, and
it runs under the same ``cudnn.benchmark`` setting as the library. On CPU its random
draws coincide with the library's, so from the same seed one step of each gives the same
losses and weights up to float noise (``benchmarks.distill_step`` checks this).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from synthsets.augment import DSA
from synthsets.data import RealData
from synthsets.dataset import _mix_seed
from synthsets.discriminator import Discriminator
from synthsets.distill import DistillConfig
from synthsets.generator import Generator, GeneratorConfig
from synthsets.models import create_model

from ._common import stock_layers


class NaiveDistiller:
    """Stage-1 / stage-2 epochs of DiM, written plainly (see the module docstring)."""

    def __init__(self, config: DistillConfig, real: RealData) -> None:
        self.cfg = config
        self.device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.real = real
        self.num_classes = real.num_classes
        self.x = real.train.images  # stays on the CPU
        self.y = real.train.labels
        torch.manual_seed(config.seed)
        self.G = stock_layers(Generator(
            GeneratorConfig(
                num_classes=real.num_classes,
                channels=real.channels,
                image_size=real.image_size,
                noise_dim=config.noise_dim,
                width=config.width,
                dataset=real.name,
                classes=real.classes,
                mean=real.mean,
                std=real.std,
            )
        )).to(self.device)  # stock nn.Conv2d / nn.ConvTranspose2d
        D = Discriminator(real.num_classes, real.channels, real.image_size, config.disc_width)
        self.D = stock_layers(D).to(self.device)  # nn.LayerNorm and nn.Conv2d, as research code has it
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=config.lr, betas=tuple(config.betas))
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=config.lr, betas=tuple(config.betas))
        self.dsa = DSA()

    def _steps(self, stage: int) -> int:
        full = max(1, len(self.y) // self.cfg.batch_size)
        if stage == 2 and self.cfg.stage2_steps_per_epoch:
            return self.cfg.stage2_steps_per_epoch
        return min(full, self.cfg.steps_per_epoch) if self.cfg.steps_per_epoch else full

    # -- one epoch -------------------------------------------------------------------------
    def run_epoch(self, epoch: int) -> dict[str, Any]:
        cfg = self.cfg
        stage = 1 if epoch < cfg.stage1_epochs else 2
        if epoch == cfg.stage1_epochs:
            for opt in (self.opt_g, self.opt_d):
                for group in opt.param_groups:
                    group["lr"] = cfg.stage2_lr
        torch.manual_seed(_mix_seed(cfg.seed, epoch, 0))
        matcher = opt_m = None
        if stage == 2:
            torch.manual_seed(_mix_seed(cfg.seed, epoch, 7))
            name = cfg.pool[int(torch.randint(len(cfg.pool), (1,)).item())]
            kwargs = {"width": cfg.pool_width} if cfg.pool_width and name.startswith("convnet") else {}
            matcher = create_model(name, self.num_classes, self.real.channels, self.real.image_size, **kwargs)
            matcher = stock_layers(matcher).to(self.device)  # research code pools with nn.AvgPool2d
            opt_m = torch.optim.SGD(
                matcher.parameters(), lr=cfg.inner_lr, momentum=cfg.inner_momentum, weight_decay=cfg.inner_weight_decay
            )
            torch.manual_seed(_mix_seed(cfg.seed, epoch, 0, 1))
        self.G.train()
        self.D.train()
        steps = self._steps(stage)
        n, b = len(self.y), cfg.batch_size
        order = torch.cat([torch.randperm(n) for _ in range(math.ceil(steps * b / n))])
        history: list[dict[str, float]] = []
        for step in range(steps):
            idx = order[step * b : (step + 1) * b]
            history.append(self.train_step(idx, matcher, opt_m))
        record: dict[str, Any] = {"epoch": epoch + 1, "stage": stage, "steps": steps}
        for key in history[0]:
            record[key] = sum(h[key] for h in history) / steps
        return record

    def train_step(self, idx: torch.Tensor, matcher, opt_m) -> dict[str, float]:
        cfg, device = self.cfg, self.device
        mean = torch.tensor(self.real.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.real.std).view(1, -1, 1, 1)
        x_cpu, y_cpu = self.x[idx], self.y[idx]
        real = ((x_cpu * std + mean) * 2 - 1).to(device)  # normalised -> [-1, 1]
        labels = y_cpu.to(device)
        noise = torch.randn(len(idx), cfg.noise_dim)
        noise[:, : self.num_classes] = F.one_hot(y_cpu, self.num_classes).float()
        z = noise.to(device)
        stats: dict[str, float] = {}

        # discriminator
        for p in self.D.parameters():
            p.requires_grad = True
        with torch.no_grad():
            fake = self.G(z)
        src_real, cls_real = self.D(real)
        src_fake, cls_fake = self.D(fake)
        d_real, d_fake = src_real.mean(), src_fake.mean()
        ce_real, ce_fake = F.cross_entropy(cls_real, labels), F.cross_entropy(cls_fake, labels)
        alpha = torch.rand(len(idx), 1, 1, 1).to(device)
        mixed = (alpha * real.detach() + (1 - alpha) * fake.detach()).requires_grad_(True)
        src_mixed, _ = self.D(mixed)
        grad = torch.autograd.grad(
            outputs=src_mixed,
            inputs=mixed,
            grad_outputs=torch.ones(src_mixed.size()).to(device),
            create_graph=True,
            retain_graph=True,
        )[0]
        gp = ((grad.view(grad.size(0), -1).norm(2, dim=1) - 1) ** 2).mean()
        d_loss = d_fake - d_real + ce_real + ce_fake + cfg.gp_weight * gp
        self.opt_d.zero_grad()
        d_loss.backward()
        self.opt_d.step()
        stats["d_loss"] = d_loss.item()
        stats["gp"] = gp.item()
        stats["wdist"] = (d_real - d_fake).item()

        # the pool model: inner SGD steps on DSA-augmented real images
        if matcher is not None:
            matcher.train()
            for p in matcher.parameters():
                p.requires_grad = True
            for _ in range(cfg.inner_steps):
                j = torch.randint(len(self.y), (cfg.batch_size,))
                xb = self.dsa(self.x[j].to(device))
                loss = F.cross_entropy(matcher(xb), self.y[j].to(device))
                opt_m.zero_grad()
                loss.backward()
                opt_m.step()
            stats["pool_ce"] = loss.item()
            for p in matcher.parameters():  # matching in training mode, as the reference
                p.requires_grad = False

        # generator
        for p in self.D.parameters():
            p.requires_grad = False
        fake = self.G(z)
        src, cls = self.D(fake)
        g_gan = -src.mean() + F.cross_entropy(cls, labels)
        loss = g_gan
        stats["g_loss"] = g_gan.item()
        if matcher is not None:
            mean_d = torch.tensor(self.real.mean, device=device).view(1, -1, 1, 1)
            std_d = torch.tensor(self.real.std, device=device).view(1, -1, 1, 1)
            real_c = ((real + 1) / 2 - mean_d) / std_d
            fake_c = ((fake + 1) / 2 - mean_d) / std_d
            real_aug, fake_aug = self.dsa.pair(real_c, fake_c, siamese=cfg.siamese)
            with torch.no_grad():
                target = F.log_softmax(matcher(real_aug), dim=1)
            match = (target - F.log_softmax(matcher(fake_aug), dim=1)).pow(2).mean()
            loss = loss + cfg.match_weight * match
            stats["match"] = match.item()
        self.opt_g.zero_grad()
        loss.backward()
        self.opt_g.step()
        return stats
