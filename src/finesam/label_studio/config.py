"""The parts of a Label Studio labeling config the backend uses: Image tags, the BrushLabels tag
that the masks go to, and the KeyPointLabels / RectangleLabels tags whose regions are prompts.

A labeling config is XML, e.g.::

    <View>
      <Image name="image" value="$image"/>
      <BrushLabels name="mask" toName="image"><Label value="Cat"/></BrushLabels>
      <KeyPointLabels name="click" toName="image" smart="true"><Label value="Cat"/></KeyPointLabels>
      <RectangleLabels name="box" toName="image" smart="true"><Label value="Cat"/></RectangleLabels>
    </View>
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass

from ..errors import InvalidInputError

#: Prompt tags and the region ``type`` Label Studio gives their regions.
PROMPT_TAGS = {"KeyPointLabels": "keypointlabels", "RectangleLabels": "rectanglelabels"}
MAX_CONFIG_CHARS = 1_000_000
EXAMPLE_CONFIG = ('<View><Image name="image" value="$image"/><BrushLabels name="mask" toName="image"><Label value="Object"/>'
                  '</BrushLabels><KeyPointLabels name="click" toName="image" smart="true"><Label value="Object"/>'
                  '</KeyPointLabels></View>')


class LabelingConfigError(InvalidInputError):
    """A labeling config the backend cannot work with (not XML, no BrushLabels for the Image, ...)."""


@dataclass(frozen=True)
class ControlTag:
    """A labels tag: its ``name``, the tag kind (``BrushLabels``, ...), the Image names it labels
    (``to_names``) and its Label values."""

    name: str
    kind: str
    to_names: tuple[str, ...]
    labels: tuple[str, ...]


@dataclass(frozen=True)
class LabelingConfig:
    """Image tags (name -> the task data key of its ``value="$key"``), BrushLabels and prompt tags."""

    images: dict[str, str]
    brushes: tuple[ControlTag, ...]
    prompts: dict[str, ControlTag]

    @classmethod
    def parse(cls, xml: str) -> "LabelingConfig":
        if not isinstance(xml, str) or not xml.strip():
            raise LabelingConfigError("no labeling config: Label Studio sends it as 'schema' to /setup and as "
                                      f"'label_config' to /predict; e.g. {EXAMPLE_CONFIG}")
        if len(xml) > MAX_CONFIG_CHARS:
            raise LabelingConfigError(f"the labeling config is longer than {MAX_CONFIG_CHARS} characters")
        if "<!DOCTYPE" in xml or "<!ENTITY" in xml:
            raise LabelingConfigError("the labeling config declares a DOCTYPE or entities; Label Studio configs have neither")
        try:
            root = ElementTree.fromstring(xml)
        except ElementTree.ParseError as error:
            raise LabelingConfigError(f"the labeling config is not valid XML ({error})") from error
        images: dict[str, str] = {}
        brushes: list[ControlTag] = []
        prompts: dict[str, ControlTag] = {}
        for element in root.iter():
            name = element.get("name")
            if element.tag == "Image" and name:
                value = element.get("value", "")
                if not value.startswith("$") or len(value) < 2:
                    raise LabelingConfigError(f"the Image tag {name!r} has value={value!r}; the backend reads images "
                                              "named by a task field: value=\"$image\"")
                images[name] = value[1:]
            elif element.tag == "BrushLabels" or element.tag in PROMPT_TAGS:
                if not name:
                    raise LabelingConfigError(f"a {element.tag} tag has no name attribute")
                to_names = tuple(part.strip() for part in element.get("toName", "").split(",") if part.strip())
                labels = tuple(label.get("value", "") for label in element.iter("Label"))
                tag = ControlTag(name, element.tag, to_names, labels)
                if element.tag == "BrushLabels":
                    brushes.append(tag)
                else:
                    prompts[name] = tag
        return cls(images, tuple(brushes), prompts)

    def brush_for(self, image_name: str) -> ControlTag:
        """The BrushLabels tag that labels the Image ``image_name`` (the first, if several)."""
        for brush in self.brushes:
            if image_name in brush.to_names:
                return brush
        raise LabelingConfigError(
            f"the labeling config has no BrushLabels tag for the Image {image_name!r}: the backend returns brush masks; "
            f"add e.g. <BrushLabels name=\"mask\" toName=\"{image_name}\"><Label value=\"Object\"/></BrushLabels>")

    def image_for_brush(self) -> tuple[str, ControlTag]:
        """The first Image that a BrushLabels tag labels, with that tag (for predictions without prompts)."""
        for brush in self.brushes:
            for image_name in brush.to_names:
                if image_name in self.images:
                    return image_name, brush
        raise LabelingConfigError(
            "the labeling config has no BrushLabels tag whose toName is an Image: the backend returns brush masks; "
            f"e.g. {EXAMPLE_CONFIG}")
