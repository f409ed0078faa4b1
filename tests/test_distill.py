"""Label-free distillation (DistilHuBERT's recipe) through the shared teacher-student module, on a
tiny random Whisper teacher and noise-like audio made here."""

import torch

from upstream_quant.distill import DistillConfig, DistillModule, TeacherStudent, collate_wavs, distill, whisper_student
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


def test_the_teacher_memo_gives_the_teachers_states_and_skips_repeated_audio():
    """Targets equal the teacher's own forward on the batch (rounded to fp16) over the valid
    frames, whatever the batch mixes; audio seen before is not run through the teacher again."""

    teacher = _teacher()
    module = TeacherStudent(whisper_student(teacher, 1, "s"), teacher)
    clips = [a[: n] for a, n in zip(_audio(4), (16000, 9000, 12000, 4000))]
    wavs, lengths = collate_wavs(clips[:3])
    first = module.teacher_targets(wavs, lengths)
    with torch.no_grad():
        direct, lens = teacher(wavs, lengths)
    for got, want, n in zip(first, direct, lens):
        for i in range(3):
            k = int(n[i])
            assert torch.allclose(got[i, :k], want[i, :k], atol=2e-3, rtol=2e-3)
    assert (module.memo_hits, module.memo_misses) == (0, 3)
    wavs2, lengths2 = collate_wavs([clips[3], clips[1]])  # one new clip, one seen in another batch
    calls = []
    hook = teacher.register_forward_hook(lambda m, a, o: calls.append(a[0].shape[0]))
    second = module.teacher_targets(wavs2, lengths2)
    hook.remove()
    assert calls == [1] and (module.memo_hits, module.memo_misses) == (1, 4)  # only the new clip ran
    k = int(lens[-1][1])
    assert torch.equal(second[-1][1, :k], first[-1][1, :k])


def test_length_sorted_batches_are_a_permutation_pad_less_and_resume_in_place():
    from upstream_quant.distill import EpochShuffle

    gen = torch.Generator().manual_seed(1)
    lengths = torch.randint(16000, 48000, (67,), generator=gen).tolist()
    plain = EpochShuffle(67, 3, 8, drop_last=True)
    grouped = EpochShuffle(67, 3, 8, drop_last=True, lengths=lengths)

    def padded(order):  # audio a batch of consecutive items costs: its longest item, times its size
        return sum(8 * max(lengths[i] for i in order[j : j + 8]) for j in range(0, 64, 8))

    for epoch in range(3):
        order = grouped.order(epoch)
        assert sorted(order) == list(range(67)) and order != grouped.order(epoch + 1)
        assert padded(order) < 0.9 * padded(plain.order(epoch))
    done = [0]
    grouped.step_source = lambda: done[0]
    done[0] = 8 + 3  # the second epoch (8 full batches an epoch), three batches in
    assert [i for i, _ in grouped] == grouped.order(1)[3 * 8:]


def test_packed_items_are_several_utterances_in_a_row_within_the_pack_and_repeat_per_epoch():
    from upstream_quant.distill import CropDataset

    clips = [torch.full((n,), float(k + 1)) for k, n in enumerate((3000, 5000, 2000, 7000, 4000))]
    data = CropDataset(clips, crop=6000, seed=3, pack=20000)
    item = data[(1, 0)]
    assert item.numel() <= 20000 and torch.equal(item[:5000], clips[1])  # item 1 first, whole
    values = [v for v in item.unique().tolist() if v]
    assert len(values) >= 2  # others follow, with pauses of silence between them
    assert torch.equal(item, data[(1, 0)]) and not all(torch.equal(data[(1, 0)], data[(1, e)]) for e in range(1, 4))
    assert torch.equal(CropDataset(clips, crop=6000, seed=3)[(1, 0)], clips[1])  # unpacked: the crop alone
    fixed = CropDataset(clips, crop=6000, seed=3, pack=20000, fixed=True)  # every epoch's item i is epoch 0's
    assert all(torch.equal(fixed[(1, e)], data[(1, 0)]) for e in range(4))
    crops = CropDataset(clips, crop=2500, seed=3, fixed=True)  # and so is a random crop
    assert all(torch.equal(crops[(3, e)], crops[(3, 0)]) for e in range(4))


def test_fixed_items_all_recur_and_the_memo_keeps_only_the_states_the_terms_read():
    teacher = _teacher()
    module = TeacherStudent(whisper_student(teacher, 1, "s"), teacher)
    module.crop_samples, module.packed = 12000, True
    lengths = torch.tensor([12000, 9000])
    assert module.recurring(lengths, 12000) == [False, False]  # packs drawn afresh never recur
    module.fixed_items = True
    assert module.recurring(lengths, 12000) == [True, True]
    module.kept_states = (-1,)
    wavs, lengths = collate_wavs([a[:n] for a, n in zip(_audio(2), (12000, 9000))])
    keys = module.memo_keys(wavs, lengths, module.recurring(lengths, 12000))
    got = module.teacher_targets(wavs, lengths, keys)
    with torch.no_grad():
        direct, _ = teacher(wavs, lengths)
    assert len(got) == 1 and got[0].shape == direct[-1].shape and len(set(keys)) == 2 and None not in keys
    assert module.memo.keys() == set(keys) and all(len(v) == 1 for v in module.memo.values()) and module.memo_misses == 2
    module.teacher_targets(wavs, lengths, module.memo_keys(wavs, lengths, [True, True]))
    assert module.memo_hits == 2
