"""Standard mask formats: COCO RLE, COCO polygons and GeoJSON, COCO results files (no pycocotools
needed), instance-id PNGs."""

from .coco import read_coco_results, results_entry, write_coco_results
from .instances import instance_ids, instance_png, png_bytes
from .polygons import mask_to_geojson, mask_to_polygons
from .rle import decode_rle, encode_rle, mask_bbox, rle_area, rle_bbox

__all__ = [
    "decode_rle", "encode_rle", "mask_bbox", "rle_area", "rle_bbox",
    "mask_to_geojson", "mask_to_polygons",
    "read_coco_results", "results_entry", "write_coco_results",
    "instance_ids", "instance_png", "png_bytes",
]
