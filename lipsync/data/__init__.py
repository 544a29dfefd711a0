"""The training data: one folder per video on disk, filelists of splits, window datasets, the DataModule.

    folder.py     THE dataset format: its one writer and one reader (VideoLatents)
    filelists.py  filelists_<name>/{train,val,test}.txt: making, reading, unions
    datasets.py   SyncNetDataset, GeneratorDataset: seeded windows of T frames
    module.py     LatentDataModule: datasets and loaders for Lightning
"""
