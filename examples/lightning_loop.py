"""adabits under PyTorch Lightning: the plain loop's flow (examples/plain_loop.py), with Lightning's Trainer
running the joint fine-tuning.

    python examples/lightning_loop.py --out runs/lightning_loop

Lightning rather than Hugging Face's `Trainer`: it trains any `nn.Module` on any DataLoader (HF's expects its own
model outputs and datasets), and it installs beside the pinned CPU torch with light dependencies.

The one thing to know: the AdaBits step runs a forward and a backward per bit-width, so the module trains with
manual optimization and hands Lightning's `manual_backward` to `adabits.joint_step` (Lightning's precision
plugins and strategies then apply to every bit-width's backward).
"""
from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from plain_loop import BITS, arguments, deploy, load_data, top1, train_float
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

import adabits
import adabits.analysis.evaluation
from adabits.runtime import load


class JointFineTuning(L.LightningModule):
    """A converted model trained at every bit-width per step, with one optimizer step."""

    def __init__(self, model: nn.Module, lr: float) -> None:
        super().__init__()
        self.model, self.lr = model, lr
        self.automatic_optimization = False  # the step runs one backward per bit-width

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        images, labels = batch
        optimizer = self.optimizers()
        optimizer.zero_grad()
        losses = adabits.joint_step(self.model, images, labels, backward=self.manual_backward)
        optimizer.step()
        self.log_dict({f"loss_{bits}": float(step) for bits, step in losses.items()})

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.model.parameters(), lr=self.lr, momentum=0.9)


def served_bits(model: nn.Module, path: Path, images: Tensor) -> dict:
    """For each bit-width asked of the deployed file, the PyTorch model's bit-width whose logits its logits are
    nearest to: switching per call runs the bit-width asked for, not another."""
    deployed, reference = load(path), {}
    for bits in BITS:
        with adabits.use_bits(model.eval(), bits), torch.no_grad():
            reference[bits] = model(images)
    served = {bits: torch.from_numpy(deployed.run(images, bits=bits)) for bits in BITS}
    return {asked: min(BITS, key=lambda bits: float((served[asked] - reference[bits]).abs().max())) for asked in BITS}


def main(argv: list[str] | None = None) -> dict:
    args = arguments(argv, "runs/lightning_loop")
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    train_x, train_y, test_x, test_y = load_data(args.train_images, args.test_images)
    test = list(zip(test_x.split(500), test_y.split(500)))

    model = train_float(train_x, train_y, args.float_epochs, generator)  # 1. your float model
    float_top1 = adabits.analysis.evaluation.top1(model, test)
    model = adabits.quantize_model(model, BITS, calibration=[train_x[:512]])  # 2. switchable and calibrated

    trainer = L.Trainer(max_steps=args.joint_steps, accelerator="cpu", devices=1, logger=False,  # 3. Lightning
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=args.out)
    loader = DataLoader(TensorDataset(train_x, train_y), batch_size=128, shuffle=True, generator=generator)
    trainer.fit(JointFineTuning(model.train(), lr=0.005), loader)  # Lightning keeps the modules' mode

    trained = adabits.evaluate(model, test, topk=(1,))  # 4. every bit-width, 5. one deployed file
    path, graph, agreement = deploy(model, train_x, test_x, Path(args.out))
    result = {"float_top1": float_top1, "trained_top1": top1(trained), "steps": trainer.global_step,
              "exported": str(path), "graph": graph, "runtime_agreement": agreement,
              "runtime_bits": served_bits(model, path, test_x[:32])}
    for key, value in result.items():
        print(f"{key}: {value}")
    return result


if __name__ == "__main__":
    main()
