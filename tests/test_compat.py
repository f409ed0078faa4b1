import subprocess
import sys
import textwrap


def run_py(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)


def test_broken_torchaudio_is_replaced_by_a_stand_in_that_fails_only_when_used():
    proc = run_py("""
        import sys
        sys.modules["torchaudio"] = None  # what a broken/absent torchaudio looks like to import
        from upstream_quant.compat import ensure_torchaudio, TorchaudioUnavailable
        assert ensure_torchaudio() == "stub"
        import torchaudio
        import torchaudio.compliance.kaldi as kaldi   # submodules import
        torchaudio.set_audio_backend("sox_io")        # removed in torchaudio 2.9; s3prl calls it
        try:
            kaldi.fbank(None)
        except TorchaudioUnavailable as err:
            assert "soundfile" in str(err) and "kaldi.fbank" in str(err)
        else:
            raise SystemExit("stand-in did not raise")
        import s3prl.upstream.utils  # imports torchaudio at module level
        print("ok")
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("ok")


def test_working_torchaudio_is_kept_and_gains_the_removed_backend_setter():
    proc = run_py("""
        import sys, types
        fake = types.ModuleType("torchaudio"); fake.__version__ = "2.11.0"
        sys.modules["torchaudio"] = fake
        from upstream_quant.compat import ensure_torchaudio
        assert ensure_torchaudio() == "real"
        import torchaudio
        assert torchaudio is fake
        torchaudio.set_audio_backend("sox_io")
        print("ok")
    """)
    assert proc.returncode == 0, proc.stderr


def test_this_environment_imports_s3prl_model_code():
    """The stand-in is used exactly when this environment's torchaudio does not import (here:
    the CUDA build s3prl pulls beside CPU torch), and s3prl's model code imports either way."""
    plain = run_py("import torchaudio")
    proc = run_py("""
        from upstream_quant.compat import ensure_torchaudio
        state = ensure_torchaudio()
        import s3prl.upstream.hubert.convert  # pulls s3prl.upstream.utils -> torchaudio
        print(state)
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[-1] == ("real" if plain.returncode == 0 else "stub"), (plain.stderr[-300:], proc.stdout)
