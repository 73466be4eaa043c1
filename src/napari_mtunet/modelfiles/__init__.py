"""Model files: reading (and, for checkpoints, writing) what a trained model is stored in.

Below :mod:`napari_mtunet.inference`; :mod:`napari_mtunet.export` (which only
writes ONNX files and bioimage.io packages for others) builds on it, never the
other way round.

- checkpoints (``.safetensors``): :mod:`.hashing`, :mod:`.sniff`,
  :mod:`.safetensors_format`, :mod:`.schema`, :mod:`.checkpoint_save`,
  :mod:`.checkpoint_load` (public path: :mod:`napari_mtunet.checkpoint`);
- bioimage.io packages exported by napari-mtunet: :mod:`.package`;
- ONNX graphs: :mod:`.onnx_graph` (the traced graph, its inputs/outputs and
  metadata), :mod:`.onnx_file` (reading and verifying a graph file),
  :mod:`.onnx_session` / :mod:`.onnx_runtime` (ONNX Runtime as an inference
  backend, with its verified cache of graphs).

Errors: :class:`~.errors.ModelFileError` and its subclasses name the file
(and, in a package, the entry) and the problem.
"""
