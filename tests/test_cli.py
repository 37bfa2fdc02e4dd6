"""The ``pladis-analysis`` command line on a tiny Stable Diffusion pipeline saved to disk."""

import json
import re

import pandas as pd
import pytest

from pladis_analysis.cli import COMMANDS, _split_variants, build_parser, main
from tiny_models import one_torch_thread  # noqa: F401  (autouse)
from tiny_models import tiny_sd_pipeline


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_sd")
    tiny_sd_pipeline(root / "tok").save_pretrained(root / "pipe")
    return root / "pipe"


def test_sample_writes_images_table_and_provenance(model_dir, tmp_path):
    out = tmp_path / "sample"
    assert main(["sample", "--model", str(model_dir), "--prompt", "a red circle", "--prompt", "a blue square",
                 "--steps", "2", "--guidance-scale", "5", "--pladis-scale", "2", "--also-stock", "--backend", "torch",
                 "--out", str(out)]) == 0
    table = pd.read_csv(out / "samples.csv")
    assert len(table) == 4 and sorted(table.pladis_scale.unique()) == [0.0, 2.0]
    assert all((out / image).exists() for image in table.image)
    meta = json.loads((out / "samples.meta.json").read_text())
    assert meta["config"]["pladis_scale"] == 2.0 and meta["seeds"] == [0, 1] and "versions" in meta
    assert meta["config"]["backend"] == "torch"


def test_image_size_reaches_the_pipeline(model_dir, tmp_path, capsys):
    out = tmp_path / "sized"
    assert main(["sample", "--model", str(model_dir), "--prompt", "a red circle", "--steps", "1", "--height", "32",
                 "--width", "16", "--backend", "torch", "--out", str(out)]) == 0
    table = pd.read_csv(out / "samples.csv")
    assert (table.height == 32).all() and (table.width == 16).all()
    assert json.loads((out / "samples.meta.json").read_text())["config"]["height"] == 32
    with pytest.raises(SystemExit):
        main(["sample", "--model", "bundled", "--prompt", "x", "--steps", "1", "--height", "64", "--out", str(out)])
    assert "--height 64: ShapesPipeline makes images of one fixed size" in capsys.readouterr().err


def test_probe_writes_stats_and_heatmaps(model_dir, tmp_path):
    out = tmp_path / "probe"
    assert main(["probe", "--model", str(model_dir), "--prompt", "a red circle", "--steps", "2",
                 "--variants", "softmax,pladis(2,1.5)", "--heatmap-steps", "1", "--pladis-scale", "2",
                 "--out", str(out)]) == 0
    stats = pd.read_csv(out / "attention_stats.csv")
    assert set(stats.variant) == {"softmax", "pladis(2, 1.5)"} and sorted(stats.step.unique()) == [0, 1]
    assert set(stats.branch) == {"uncond", "cond"}
    assert {"entropy", "support_size", "timestep", "layer", "head"} <= set(stats.columns)
    assert (out / "heatmaps.npz").exists() and (out / "attention_stats.meta.json").exists()
    assert len(list((out / "images").glob("*.png"))) == 1


def test_missing_model_folder_is_a_clear_error(tmp_path, capsys):
    argv = ["sample", "--model", str(tmp_path / "nowhere"), "--prompt", "x", "--out", str(tmp_path / "o")]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "sample: error:" in err and "model_index.json" in err and "Traceback" not in err
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        main(["--traceback", *argv])


def test_a_package_the_model_folder_needs_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    from pladis_analysis.diffusion import pipelines

    folder = tmp_path / "pixart"
    (folder / "tokenizer").mkdir(parents=True)
    (folder / "tokenizer" / "spiece.model").write_bytes(b"")
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "PixArtAlphaPipeline",
                                                         "tokenizer": ["transformers", "T5Tokenizer"]}))
    monkeypatch.setattr(pipelines, "_importable", lambda module: module != "sentencepiece")
    with pytest.raises(SystemExit) as exit_info:
        main(["sample", "--model", str(folder), "--prompt", "x", "--out", str(tmp_path / "o")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "needs sentencepiece: pip install sentencepiece" in err and "Traceback" not in err


def test_bad_alpha_is_a_one_line_error(model_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["sample", "--model", str(model_dir), "--prompt", "x", "--alpha", "1", "--steps", "1",
              "--out", str(tmp_path / "o")])
    assert exit_info.value.code == 2
    assert "--alpha 1.0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["probe", "--model", str(model_dir), "--prompt", "x", "--pladis-scale", "-1", "--out", str(tmp_path)])
    assert "--pladis-scale -1.0" in capsys.readouterr().err


def test_triton_backend_on_cpu_without_the_interpreter_fails_first(tmp_path, capsys, monkeypatch):
    from pladis_analysis.maps.kernels import dispatch

    monkeypatch.setattr(dispatch, "interpreter_ready", lambda: False)
    with pytest.raises(SystemExit):
        main(["sample", "--model", "/nowhere", "--device", "cpu", "--prompt", "x", "--backend", "triton",
              "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert "TRITON_INTERPRET=1" in err and "model_index" not in err           # before the model folder is read


@pytest.mark.parametrize("extra, message", [
    (["--device", "gpu0"], "--device 'gpu0' is not a device torch knows"),
    (["--heatmap-steps", "x"], "--heatmap-steps 'x': expected step indices"),
    (["--heatmap-steps", "7"], r"--heatmap-steps \[7\]: steps run from 0 to 1"),
    (["--heatmap-steps", "0", "--prompt", "a blue square"], "would average token maps of different prompts"),
    (["--stats", ","], "no statistic named"),
    (["--prompts-file", "{tmp}"], "Is a directory"),
    (["--out", "{tmp}/file.txt"], "is a file; give a folder"),
])
def test_bad_probe_arguments_fail_first_in_one_line(tmp_path, capsys, extra, message):
    """Before the model folder is read (it does not exist here), without a traceback."""
    (tmp_path / "file.txt").write_text("")
    argv = ["probe", "--model", str(tmp_path / "nowhere"), "--prompt", "x", "--steps", "2", "--out",
            str(tmp_path / "o")] + [a.format(tmp=tmp_path) for a in extra]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert re.search(message, err) and "model_index" not in err, err


def test_parser_structure():
    assert {"sample", "probe"} <= set(COMMANDS)
    args = build_parser().parse_args(["probe", "--model", "m", "--prompt", "p", "--out", "o"])
    assert args.pladis_scale == 0.0 and args.func is COMMANDS["probe"][1]
    assert _split_variants("softmax,entmax(1.5),pladis(2,1.5)") == ["softmax", "entmax(1.5)", "pladis(2,1.5)"]
    with pytest.raises(SystemExit):
        build_parser().parse_args([])
