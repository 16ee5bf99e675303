"""course_lib.checkpoints: atomic saves, verified loads, clear errors for damage and mismatch."""

import dataclasses
import json
import shutil
import zipfile

import pytest
import torch

from course_lib import checkpoints
from course_lib.model import ModelConfig, Transformer

CONFIG = ModelConfig(context_len=32, n_layer=2, n_head=2, d_model=32)


def make(seed=0, config=CONFIG):
    torch.manual_seed(seed)
    return Transformer(config).eval()


def logits(model, seed=0):
    x = torch.randint(0, 98, (2, 32), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model(x)


def test_save_load_round_trip_gives_identical_logits(tmp_path):
    model = make()
    path = checkpoints.save_checkpoint(tmp_path / "run" / "m.pt", model, metadata={"note": "x"})
    loaded = checkpoints.load_checkpoint(path)
    assert isinstance(loaded, Transformer) and not loaded.training
    assert loaded.config == model.config
    assert torch.equal(logits(loaded), logits(model))
    entry = checkpoints.read_manifest(path.parent)["m.pt"]
    assert entry == {"note": "x", "sha256": checkpoints.sha256_of(path)}
    assert sorted(p.name for p in path.parent.iterdir()) == ["m.pt", "manifest.json"]  # no temp


def test_bf16_storage_round_trip_is_close_and_half_the_size(tmp_path):
    model = make()
    full = checkpoints.save_checkpoint(tmp_path / "fp32.pt", model)
    half = checkpoints.save_checkpoint(tmp_path / "bf16.pt", model, dtype=torch.bfloat16)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    loaded = checkpoints.load_checkpoint(half)
    for name, p in loaded.named_parameters():
        assert p.dtype == torch.float32
        expected = model.get_parameter(name).detach().to(torch.bfloat16).float()
        assert torch.equal(p.detach(), expected), name
    reference = logits(model)
    torch.testing.assert_close(logits(loaded), reference, rtol=0.02, atol=0.02 * reference.std())
    assert not torch.equal(logits(loaded), reference)


def test_a_resave_updates_the_manifest(tmp_path):
    path = checkpoints.save_checkpoint(tmp_path / "m.pt", make(0))
    first = checkpoints.read_manifest(tmp_path)["m.pt"]["sha256"]
    checkpoints.save_checkpoint(path, make(1))
    assert checkpoints.read_manifest(tmp_path)["m.pt"]["sha256"] != first
    assert torch.equal(logits(checkpoints.load_checkpoint(path)), logits(make(1)))


def test_flipped_bytes_in_the_weights_are_caught_by_the_manifest(tmp_path):
    model = make()
    path = checkpoints.save_checkpoint(tmp_path / "m.pt", model)
    raw = bytearray(path.read_bytes())
    weights = model.head.weight.detach().numpy().tobytes()
    at = raw.find(weights)
    assert at > 0
    raw[at + len(weights) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    # torch itself does not notice: the file still loads, with other weights...
    unverified = checkpoints.read_checkpoint(path, verify=False)
    assert not torch.equal(unverified["model"]["head.weight"], model.head.weight)
    # ...so it is the sha256 in the manifest that refuses it
    with pytest.raises(ValueError, match="does not match the sha256 in its manifest"):
        checkpoints.load_checkpoint(path)


def test_a_swapped_checkpoint_is_refused(tmp_path):
    a = checkpoints.save_checkpoint(tmp_path / "a.pt", make(0))
    b = checkpoints.save_checkpoint(tmp_path / "b.pt", make(1))
    shutil.copyfile(b, a)  # a valid checkpoint, but not the one the manifest lists as a.pt
    with pytest.raises(ValueError, match="damaged or was replaced"):
        checkpoints.load_checkpoint(a)
    assert torch.equal(logits(checkpoints.load_checkpoint(b)), logits(make(1)))


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_unreadable_files_outside_a_manifest_are_value_errors(tmp_path, damage):
    good = checkpoints.save_checkpoint(tmp_path / "ok" / "m.pt", make()).read_bytes()
    path = tmp_path / "loose" / "m.pt"
    path.parent.mkdir()
    path.write_bytes(
        {"truncated": good[: len(good) // 2], "garbage": b"not a checkpoint" * 100, "empty": b""}[
            damage
        ]
    )
    with pytest.warns(UserWarning, match="not listed"):
        with pytest.raises(ValueError, match="could not be read as a checkpoint"):
            checkpoints.load_checkpoint(path)


def test_a_torch_file_that_is_not_a_checkpoint_is_refused(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, path)
    checkpoints.update_manifest(path)
    with pytest.raises(ValueError, match="not a course checkpoint"):
        checkpoints.load_checkpoint(path)


class Payload:
    """Not a tensor: a pickle of it would run code on load without weights_only=True."""


def test_pickled_objects_are_refused_by_weights_only(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"config": Payload(), "model": {}}, path)
    checkpoints.update_manifest(path)  # even a "verified" file may not run code
    with pytest.raises(ValueError, match="could not be read"):
        checkpoints.load_checkpoint(path)


def test_another_format_version_is_refused(tmp_path):
    path = checkpoints.save_checkpoint(tmp_path / "m.pt", make())
    payload = torch.load(path, weights_only=True)
    payload["format_version"] = 99
    torch.save(payload, path)
    checkpoints.update_manifest(path)
    with pytest.raises(ValueError, match="format 99"):
        checkpoints.load_checkpoint(path)


def test_a_damaged_manifest_is_a_value_error(tmp_path):
    path = checkpoints.save_checkpoint(tmp_path / "m.pt", make())
    (tmp_path / "manifest.json").write_text('{"m.pt": ')
    with pytest.raises(ValueError, match="not valid JSON"):
        checkpoints.load_checkpoint(path)


def test_missing_checkpoint_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        checkpoints.load_checkpoint(tmp_path / "nothing.pt")
    with pytest.raises(FileNotFoundError):
        checkpoints.load_checkpoint(tmp_path)  # a folder is not a checkpoint either


def test_load_weights_names_the_mismatched_field(tmp_path):
    path = checkpoints.save_checkpoint(tmp_path / "m.pt", make())
    payload = checkpoints.read_checkpoint(path)
    wider = Transformer(ModelConfig(context_len=32, n_layer=2, n_head=2, d_model=64))
    with pytest.raises(ValueError, match="d_model: checkpoint 32 vs model 64"):
        checkpoints.load_weights(wider, payload)
    bidirectional = Transformer(
        ModelConfig(context_len=32, n_layer=2, n_head=2, d_model=32, attention="bidirectional")
    )
    with pytest.raises(ValueError, match="attention"):
        checkpoints.load_weights(bidirectional, payload)
    # dropout is a training choice, not a shape: it may differ
    with_dropout = make(
        5, ModelConfig(context_len=32, n_layer=2, n_head=2, d_model=32, dropout=0.1)
    )
    checkpoints.load_weights(with_dropout, payload)
    assert torch.equal(logits(with_dropout.eval()), logits(make()))


def test_other_attention_takes_a_causal_models_weights_for_a_block_causal_one(tmp_path):
    path = checkpoints.save_checkpoint(tmp_path / "m.pt", make())
    payload = checkpoints.read_checkpoint(path)
    block = Transformer(
        ModelConfig(
            context_len=32, n_layer=2, n_head=2, d_model=32, attention="block_causal", block_len=4
        )
    )
    checkpoints.load_weights(block, payload, other_attention=True)
    for name, weight in make().state_dict().items():
        assert torch.equal(block.state_dict()[name], weight), name
    # only how it attends may differ: another shape is still refused
    wider = Transformer(
        ModelConfig(context_len=32, n_layer=2, n_head=2, d_model=64, attention="bidirectional")
    )
    with pytest.raises(ValueError, match="d_model: checkpoint 32 vs model 64"):
        checkpoints.load_weights(wider, payload, other_attention=True)


def test_an_invalid_saved_config_is_a_value_error(tmp_path):
    path = checkpoints.save_checkpoint(tmp_path / "m.pt", make())
    payload = torch.load(path, weights_only=True)
    payload["config"]["n_head"] = 3  # does not divide d_model
    torch.save(payload, path)
    checkpoints.update_manifest(path)
    with pytest.raises(ValueError, match="invalid model config"):
        checkpoints.load_checkpoint(path)


def test_loads_map_to_the_cpu_with_weights_only(tmp_path, monkeypatch):
    path = checkpoints.save_checkpoint(tmp_path / "m.pt", make())
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(checkpoints.torch, "load", spy)
    payload = checkpoints.read_checkpoint(path)
    assert calls == [{"map_location": "cpu", "weights_only": True}]
    assert all(t.device.type == "cpu" for t in payload["model"].values())


def test_load_weights_converts_to_the_models_dtype(tmp_path):
    model = make()
    path = checkpoints.save_checkpoint(tmp_path / "m.pt", model, dtype=torch.bfloat16)
    target = make(3).double()
    checkpoints.load_weights(target, checkpoints.read_checkpoint(path))
    assert target.head.weight.dtype == torch.float64
    assert torch.equal(target.head.weight, model.head.weight.to(torch.bfloat16).double())


def _retag_storages(path, device: str) -> None:
    """Rewrite a torch.save file so every tensor says it was saved on `device` (e.g. cuda:0).

    Each storage's location is a pickled string ('cpu') inside archive/data.pkl; a file saved
    from a GPU holds 'cuda:0' there and nothing else differs. Loading such a file without
    map_location on a machine without CUDA fails, which is what this lets a CPU test check.
    """
    old, new = b"X\x03\x00\x00\x00cpu", b"X" + len(device).to_bytes(4, "little") + device.encode()
    with zipfile.ZipFile(path) as zin:
        entries = [(info, zin.read(info)) for info in zin.infolist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zout:
        for info, content in entries:
            if info.filename.endswith("/data.pkl"):
                assert old in content
                content = content.replace(old, new)
            zout.writestr(info, content)


def test_a_checkpoint_saved_on_cuda_loads_on_a_cpu_only_machine(tmp_path):
    model = make()
    path = checkpoints.save_checkpoint(tmp_path / "m.pt", model)
    _retag_storages(path, "cuda:0")
    checkpoints.update_manifest(path)  # the file changed: record its new sha256
    if not torch.cuda.is_available():  # the file really does claim CUDA tensors
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(path, weights_only=True)
    loaded = checkpoints.load_checkpoint(path)
    assert {p.device.type for p in loaded.parameters()} == {"cpu"}
    assert torch.equal(loaded.head.weight, model.head.weight)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU to save from one")
def test_tensors_saved_from_cuda_load_on_the_cpu(tmp_path):
    model = make().cuda()
    path = checkpoints.save_checkpoint(tmp_path / "m.pt", model)
    payload = torch.load(path, weights_only=True)
    payload["model"] = dict(model.state_dict())  # CUDA tensors, as a careless save would store
    torch.save(payload, path)
    checkpoints.update_manifest(path)
    assert torch.load(path, weights_only=True)["model"]["head.weight"].device.type == "cuda"
    loaded = checkpoints.load_checkpoint(path)
    assert {p.device.type for p in loaded.parameters()} == {"cpu"}
    assert torch.equal(loaded.head.weight, model.head.weight.cpu())


def test_save_unwraps_a_wrapped_model(tmp_path):
    class Wrapper(torch.nn.Module):  # what DistributedDataParallel looks like from outside
        def __init__(self, module):
            super().__init__()
            self.module = module

    model = make()
    path = checkpoints.save_checkpoint(tmp_path / "m.pt", Wrapper(model))
    assert json.loads((tmp_path / "manifest.json").read_text())["m.pt"]["sha256"]
    assert torch.equal(logits(checkpoints.load_checkpoint(path)), logits(model))


def test_a_checkpoint_saved_before_rotary_positions_existed_loads_as_learned(tmp_path):
    """Configs saved without the `position` field had learned position embeddings."""
    model = make()
    path = checkpoints.save_checkpoint(tmp_path / "m.pt", model)
    payload = torch.load(path, weights_only=True)
    del payload["config"]["position"]
    torch.save(payload, path)
    checkpoints.update_manifest(path)  # the edited file is the one the manifest vouches for
    loaded = checkpoints.load_checkpoint(path)
    assert loaded.config.position == "learned"
    assert torch.equal(logits(loaded), logits(model))


def test_a_rotary_model_round_trips_and_refuses_a_learned_one(tmp_path):
    rotary = make(config=dataclasses.replace(CONFIG, position="rotary"))
    path = checkpoints.save_checkpoint(tmp_path / "m.pt", rotary)
    loaded = checkpoints.load_checkpoint(path)
    assert loaded.pos_emb is None and torch.equal(logits(loaded), logits(rotary))
    with pytest.raises(ValueError, match="position: checkpoint 'rotary' vs model 'learned'"):
        checkpoints.load_weights(make(), checkpoints.read_checkpoint(path))
