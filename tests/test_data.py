"""lipsync.data: group-level filelists, windows over dropped frames, negatives, audio windows, fixed validation,
per-epoch training items, DataLoader workers, encoder mismatch."""
import gc

import numpy as np
import pytest
import torch
from lightning_fabric.utilities.seed import pl_worker_init_function

import make_filelists
from lipsync import timing
from lipsync.data import datasets, filelists, folder, module
from lipsync.data.folder import write_video_folder
from lipsync.errors import UserError

MODEL_ID = "tiny/wav2vec2"
T = 5


def write_video(path, frame_index, num_features=None, model_id=MODEL_ID, channels=4, size=8, dim=3):
    """Latent rows hold their frame number (full = f, masked = f + 1000) and feature row k holds k, so every
    tensor of an item says which frames / feature frames it came from."""
    frame_index = np.asarray(frame_index, dtype=np.int64)
    num_features = 2 * (int(frame_index[-1]) + 1) - 1 if num_features is None else num_features
    full = torch.from_numpy(frame_index).float()[:, None, None, None].expand(-1, channels, size, size)
    features = torch.arange(num_features).float()[:, None].expand(-1, dim)
    return write_video_folder(path, full, full + 1000, frame_index,
                              {"image_size": size * 4, "codec": "tiny/vae", "scaling_factor": 0.5},
                              features=features, model_id=model_id)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """Six videos, some with dropped frames; one too short for two windows T apart."""
    root = tmp_path_factory.mktemp("latents")
    layouts = {
        "spk0/a": list(range(0, 6)) + list(range(8, 13)) + list(range(20, 30)),  # gaps after 5 and 12
        "spk0/b": list(range(40)),
        "spk1/a": [0, 1, 2, 3, 4, 6, 7, 8, 9, 10, 11, 12, 13, 15, 16, 17, 18, 19, 20],
        "spk2/a": list(range(3, 33)),
        "spk3/a": list(range(25)),
        "spk4/short": list(range(7)),  # windows start at 0..2: none T frames apart
    }
    for rel, frames in layouts.items():
        write_video(root / rel, frames)
    return root, layouts


def folders(root, names):
    return [root / name for name in names]


def face_frames(faces):
    """[T, C, h, w] latents written by write_video -> their frame numbers [T]."""
    return faces[:, 0, 0, 0].long().tolist()


def finished_folder(path):
    """A folder the video stage finished: latents, then meta.json (written last)."""
    path.mkdir(parents=True)
    (path / folder.LATENTS_FILE).touch()
    (path / folder.META_FILE).touch()


def test_filelists_split_whole_groups_with_a_seed(tmp_path):
    root = tmp_path / "root"
    for g in range(10):
        for clip in range(3):
            finished_folder(root / f"id{g}" / f"{clip:05d}")
    (root / "id0" / "notes").mkdir()  # no latents: not a video folder
    (root / "id0" / "interrupted").mkdir()  # killed before its meta.json: not listed either
    (root / "id0" / "interrupted" / folder.LATENTS_FILE).touch()
    first = filelists.make_filelists(root, tmp_path / "a", val_groups=2, test_groups=0.2, seed=0)
    again = filelists.make_filelists(root, tmp_path / "b", val_groups=2, test_groups=0.2, seed=0)
    other = filelists.make_filelists(root, tmp_path / "c", val_groups=2, test_groups=0.2, seed=1)
    for split in filelists.SPLITS:
        assert (tmp_path / "a" / f"{split}.txt").read_text() == (tmp_path / "b" / f"{split}.txt").read_text()
    assert again == first and first != other
    groups = {split: {entry.split("/")[0] for entry in first[split]} for split in filelists.SPLITS}
    assert [len(groups[split]) for split in filelists.SPLITS] == [6, 2, 2]
    assert not (groups["train"] & groups["val"] or groups["train"] & groups["test"] or groups["val"] & groups["test"])
    assert sum(len(entries) for entries in first.values()) == 30
    assert "random.Random(0)" in (tmp_path / "a" / "README.md").read_text()

    union = filelists.union_filelists(tmp_path / "u", [tmp_path / "a", tmp_path / "b"])
    assert union == first  # duplicates collapse
    with pytest.raises(UserError, match="two splits"):
        filelists.union_filelists(tmp_path / "u", [tmp_path / "a", tmp_path / "c"])


def test_group_pattern_and_official_split(tmp_path):
    root = tmp_path / "root"
    for rel in ["hdtf/WDA_Obama_000", "hdtf/WDA_Obama_001", "hdtf/RD_Radio1_000", "hdtf/WRA_Ellmers_000"]:
        finished_folder(root / rel)
    splits = filelists.make_filelists(root, tmp_path / "h", val_groups=1, test_groups=1, group_pattern=r"(.+)_\d+$")
    split_of = {entry: split for split, entries in splits.items() for entry in entries}
    assert split_of["hdtf/WDA_Obama_000"] == split_of["hdtf/WDA_Obama_001"]  # one speaker, one split
    official = tmp_path / "lrs2"
    official.mkdir()
    (official / "train.txt").write_text("hdtf/WDA_Obama_000\nhdtf/WDA_Obama_001\nhdtf/gone_000\n")
    (official / "val.txt").write_text("hdtf/RD_Radio1_000 NF\n")
    (official / "test.txt").write_text("hdtf/WRA_Ellmers_000  MV\n")
    with pytest.warns(UserWarning, match="1 clips"):
        splits = filelists.make_filelists(root, tmp_path / "o", official_split=official)
    assert splits == {"train": ["hdtf/WDA_Obama_000", "hdtf/WDA_Obama_001"], "val": ["hdtf/RD_Radio1_000"],
                      "test": ["hdtf/WRA_Ellmers_000"]}


def test_read_filelist_names_and_missing_entries(videos, tmp_path, monkeypatch):
    root, _ = videos
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="shipped names: lrs2, hdtf"):
        filelists.filelist_dir("voxceleb")
    (tmp_path / "filelists_voxceleb").mkdir()  # any other name works once its folder exists
    assert filelists.filelist_dir("voxceleb") == tmp_path / "filelists_voxceleb"
    (tmp_path / "filelists_hdtf").mkdir()
    with pytest.raises(UserError, match="filelists_hdtf/train.txt not found"):
        filelists.read_filelist("hdtf", "train", root)
    (tmp_path / "filelists_hdtf" / "train.txt").write_text("# comment\nspk0/a extra\n\nspk0/gone\nspk9/gone\n")
    with pytest.warns(UserWarning, match="2 of 3 entries"):
        assert filelists.read_filelist("hdtf", "train", root) == [root / "spk0/a"]
    (tmp_path / "filelists_hdtf" / "val.txt").write_text("spk9/gone\n")
    with pytest.warns(UserWarning), pytest.raises(UserError, match="val.txt lists no video folder"):
        filelists.read_filelist("hdtf", "val", root)


def test_windows_never_cross_dropped_frames(videos):
    root, _ = videos
    video = folder.VideoLatents(root / "spk0/a", T)
    assert video.frames(0) == [0, 1, 2, 3, 4]
    assert [video.frames(s)[0] for s in video.starts] == [0, 1, 8] + list(range(20, 26))
    for s in video.starts:
        assert np.all(np.diff(video.frames(s)) == 1)
    short = folder.VideoLatents(root / "spk4/short", T)
    assert len(short.starts) == 3 and len(short.anchors) == 0


def test_syncnet_items_negatives_and_audio(videos):
    root, layouts = videos
    with pytest.warns(UserWarning, match="1 of 6 videos"):
        dataset = datasets.SyncNetDataset(folders(root, layouts), T, train=True, samples_per_epoch=200, seed=3)
    labels = []
    for idx in range(len(dataset)):
        item, (v, s, w, label) = dataset[idx], dataset.sample(idx)
        video = dataset.videos[v]
        assert item["faces"].shape == (T, 4, 8, 8) and item["audio"].shape == (2 * T, 3)
        faces = face_frames(item["faces"])
        assert faces == video.frames(s if label else w) and np.all(np.diff(faces) == 1)
        assert abs(video.frames(w)[0] - video.frames(s)[0]) >= T
        expected = timing.syncnet_audio_window(video.features(), video.frames(s)[0], T).float()
        assert torch.equal(item["audio"], expected)
        assert item["label"].item() == label
        labels.append(label)
    assert 0.35 < np.mean(labels) < 0.65


def test_generator_items(videos):
    root, _ = videos
    dataset = datasets.GeneratorDataset(folders(root, ["spk0/a", "spk1/a"]), T, train=False, val_samples=20)
    for idx in range(len(dataset)):
        item, (v, s, _, _) = dataset[idx], dataset.sample(idx)
        video = dataset.videos[v]
        frames = video.frames(s)
        assert face_frames(item["gt"]) == frames and face_frames(item["masked"] - 1000) == frames
        assert abs(face_frames(item["reference"])[0] - frames[0]) >= T
        assert item["audio"].shape == (T, timing.GENERATOR_AUDIO_FRAMES, 3)
        assert torch.equal(item["audio"], timing.generator_audio_windows(video.features(), frames).float())
        assert torch.equal(item["sync_audio"], timing.syncnet_audio_window(video.features(), frames[0], T).float())


def test_val_is_fixed_and_train_changes_with_epoch(videos):
    root, _ = videos
    names = ["spk0/a", "spk0/b", "spk1/a"]
    val_a = datasets.SyncNetDataset(folders(root, names), T, train=False, val_samples=16, seed=0)
    val_b = datasets.SyncNetDataset(folders(root, names), T, train=False, val_samples=16, seed=0)
    before = [val_a.sample(i) for i in range(16)]
    val_a.set_epoch(5)
    assert [val_a.sample(i) for i in range(16)] == before == [val_b.sample(i) for i in range(16)]
    assert [s.label for s in before] == [1, 0] * 8

    train = datasets.SyncNetDataset(folders(root, names), T, train=True, samples_per_epoch=16, seed=0)
    epoch0 = [train.sample(i) for i in range(16)]
    assert [train.sample(i) for i in range(16)] == epoch0  # a pure function of (seed, epoch, idx)
    train.set_epoch(1)
    assert [train.sample(i) for i in range(16)] != epoch0


def write_hdtf_filelists(cwd, monkeypatch, train: list[str], val: list[str]) -> None:
    """filelists_hdtf/{train,val}.txt in cwd, made the working directory (where the data module reads them)."""
    monkeypatch.chdir(cwd)
    (cwd / "filelists_hdtf").mkdir()
    (cwd / "filelists_hdtf" / "train.txt").write_text("".join(name + "\n" for name in train))
    (cwd / "filelists_hdtf" / "val.txt").write_text("".join(name + "\n" for name in val))


def test_datamodule_workers_describe_and_epochs(videos, tmp_path, monkeypatch):
    root, _ = videos
    write_hdtf_filelists(tmp_path, monkeypatch, train=["spk0/a", "spk0/b", "spk2/a"], val=["spk1/a", "spk3/a"])
    dm = module.LatentDataModule(root, "hdtf", task="generator", batch_size=4, num_workers=2,
                               train_samples_per_epoch=8, val_samples=8)
    assert dm.latent_channels == 4 and dm.audio_model_id == MODEL_ID  # before setup, as training scripts use it
    assert dm.describe() == module.DataDescription(4, 8, 3, MODEL_ID, "tiny/vae", 32)
    dm.setup("fit")
    val_batches = list(dm.val_dataloader())
    direct = [dm.val_dataset[i] for i in range(8)]
    assert torch.equal(torch.cat([b["audio"] for b in val_batches]), torch.stack([d["audio"] for d in direct]))
    assert torch.equal(torch.cat([b["reference"] for b in val_batches]), torch.stack([d["reference"] for d in direct]))

    loader = dm.train_dataloader()
    epoch0 = torch.cat([b["gt"] for b in loader])
    loader.sampler.set_epoch(1)  # what Lightning does each epoch; the workers persist
    epoch1 = torch.cat([b["gt"] for b in loader])
    dm.train_dataset.set_epoch(1)
    assert torch.equal(epoch1, torch.stack([dm.train_dataset[i]["gt"] for i in range(8)]))
    assert not torch.equal(epoch0, epoch1)


def test_training_loader_resumes_mid_epoch_and_splits_epochs_over_processes(videos, tmp_path, monkeypatch):
    """The training loader's state (what Lightning saves in checkpoints) restores the position in the epoch: a new
    loader (and its worker process, which draws items itself) goes on with exactly the batches the first one had
    left; a state saved after an epoch's last batch goes on with the next epoch. With several processes, each
    takes its own share of every epoch."""
    root, _ = videos
    write_hdtf_filelists(tmp_path, monkeypatch, train=["spk0/a", "spk0/b", "spk2/a"], val=["spk1/a"])
    dm = module.LatentDataModule(root, "hdtf", task="syncnet", batch_size=2, num_workers=1,
                                 train_samples_per_epoch=10, val_samples=2)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert len(loader) == 5
    loader.sampler.set_epoch(3)
    epoch = [batch["audio"] for batch in loader]
    batches = iter(loader)
    for _ in range(2):
        next(batches)
    state = loader.state_dict()
    assert state == {"epoch": 3, "batches": 2}

    resumed = dm.train_dataloader()  # a new process: fresh loader, epoch counter at 0
    dm.train_dataset.set_epoch(0)
    resumed.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip([batch["audio"] for batch in resumed], epoch[2:], strict=True))
    assert resumed.state_dict() == {"epoch": 3, "batches": 5}
    resumed.load_state_dict(resumed.state_dict())  # saved at the epoch's end: the next epoch, from its start
    assert resumed.sampler.epoch == 4 and len(list(resumed)) == 5

    shares = [module.EpochSampler(dm.train_dataset, num_replicas=3, rank=rank) for rank in range(3)]
    assert [list(share) for share in shares] == [[0, 3, 6], [1, 4, 7], [2, 5, 8]]  # the 10th item is dropped


class WorkerState(torch.utils.data.Dataset):
    """Reports, from inside a loader worker, how many objects the collector has frozen and the worker's seed."""

    def __len__(self):
        return 1

    def __getitem__(self, idx):
        return torch.tensor([gc.get_freeze_count(), torch.initial_seed()])


def test_loader_workers_never_collect_inherited_objects_and_keep_lightning_seeding(videos, tmp_path, monkeypatch):
    root, _ = videos
    write_hdtf_filelists(tmp_path, monkeypatch, train=["spk0/a", "spk2/a"], val=["spk1/a"])
    dm = module.LatentDataModule(root, "hdtf", task="generator", batch_size=2, num_workers=1, val_samples=2)
    dm.setup("fit")
    init_fn = dm.train_dataloader().worker_init_fn
    assert init_fn is dm.val_dataloader().worker_init_fn is module.freeze_inherited_objects
    assert gc.get_freeze_count() == 0  # this process freezes nothing

    def worker_state(**kwargs):
        loader = torch.utils.data.DataLoader(WorkerState(), num_workers=1, generator=torch.Generator().manual_seed(3),
                                             **kwargs)
        return next(iter(loader))[0].tolist()

    assert worker_state()[0] == 0  # a plain forked worker would collect what it inherited
    # seed_everything(workers=True) earlier in this process (a training test) leaves PL_SEED_WORKERS set
    monkeypatch.delenv("PL_SEED_WORKERS", raising=False)
    frozen, seed = worker_state(worker_init_fn=init_fn)
    assert frozen > 1000  # everything the worker inherited (torch, Lightning, the dataset)
    monkeypatch.setenv("PL_SEED_WORKERS", "1")  # what seed_everything(workers=True) sets
    assert worker_state(worker_init_fn=init_fn)[1] == worker_state(worker_init_fn=pl_worker_init_function)[1] != seed


def test_mixed_audio_encoders_are_an_error(videos, tmp_path):
    root, _ = videos
    write_video(tmp_path / "other", list(range(20)), model_id="facebook/wav2vec2-base-960h")
    with pytest.raises(UserError, match="other: wav2vec2.pt was made by 'facebook/wav2vec2-base-960h'"):
        datasets.SyncNetDataset([root / "spk0/b", tmp_path / "other"], T)
    with pytest.raises(UserError, match="expected encoder"):
        datasets.GeneratorDataset([root / "spk0/b"], T, audio_model_id="facebook/wav2vec2-base-960h")


def test_make_filelists_script_union(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for name, entries in {"3300": "a/x_1\n", "hdtf": "h/y_0\n"}.items():
        (tmp_path / f"filelists_{name}").mkdir()
        for split in filelists.SPLITS:
            (tmp_path / f"filelists_{name}" / f"{split}.txt").write_text(entries.replace("\n", f"_{split}\n"))
    (tmp_path / "filelists_3300_and_hdtf").mkdir()
    make_filelists.main(["--union", "3300_and_hdtf"])
    assert (tmp_path / "filelists_3300_and_hdtf" / "val.txt").read_text() == "a/x_1_val\nh/y_0_val\n"
    assert "make_filelists.py --union 3300_and_hdtf" in (tmp_path / "filelists_3300_and_hdtf" / "README.md").read_text()
    assert "train 2, val 2, test 2" in capsys.readouterr().out
