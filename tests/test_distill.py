"""Label-free distillation (DistilHuBERT's recipe) through the shared teacher-student module, on a
tiny random Whisper teacher and noise-like audio made here."""

import torch

from upstream_quant.distill import DistillConfig, DistillModule, TeacherStudent, distill, whisper_student
from upstream_quant.upstreams.whisper import build_whisper

TINY = {"layers": 3, "d_model": 32, "heads": 2, "ffn": 64}


def _audio(n: int = 8) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    t = torch.arange(16000) / 16000
    return [0.3 * torch.sin(2 * torch.pi * (200 + 150 * i) * t) + 0.05 * torch.randn(16000, generator=gen) for i in range(n)]


def _teacher():
    torch.manual_seed(0)
    return build_whisper(TINY, "teacher").eval()


def test_distillation_lowers_the_loss_and_repeats_exactly(tmp_path):
    teacher = _teacher()
    config = DistillConfig(student_layers=1, teacher_layers=(1, 2, 3), lr=2e-3, steps=40, batch_size=4, crop_seconds=0.5,
                           warmup_steps=5)
    runs = [distill(whisper_student(teacher, 1, "student"), teacher, _audio(), config, tmp_path / f"r{i}",
                    accelerator="cpu", devices=1, progress=False) for i in range(2)]
    losses = runs[0].losses
    assert runs[0].steps == 40 and len(losses) == 40
    assert sum(losses[-5:]) / 5 < 0.9 * sum(losses[:5]) / 5  # it learns
    assert losses == runs[1].losses  # seeded: the same trace twice
    assert isinstance(DistillModule(whisper_student(teacher, 1, "s"), teacher, config), TeacherStudent)
    # the teacher is not a submodule: its weights are neither trained nor saved with the student
    assert not any(k.startswith("teacher") for k in DistillModule(whisper_student(teacher, 1, "s"), teacher, config).state_dict())
