"""What every layer above may use and none of it is about segmentation: the device a process
computes on (:mod:`.device`), its place in a ``torchrun`` job (:mod:`.distributed`), files
written atomically (:mod:`.files`) and checks of the paths a command will write
(:mod:`.outputs`)."""
