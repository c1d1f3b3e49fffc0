"""The benchmark registry: name -> where the files come from, the layout read, the task shape, the official protocol
and the license. `--benchmark NAME ...` takes names and suites (`compositionality`, `zeroshot`, `retrieval`, `all`).

Sources were checked against the benchmarks' own code and pages (recorded in `verified`): a Hub dataset id only where
the files really are on the Hub, otherwise the official download. A benchmark is found under
`<benchmark_dir>/<name>/` in its official layout; with a Hub source and no offline mode its files are downloaded
there (`huggingface_hub.snapshot_download`, which caches). Missing files raise `BenchmarkNotFound` with the commands
that fetch them.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from ...data.hnc import TEST_SCHEMA, TRAIN_SCHEMA
from . import protocols, readers

SHAPES = ("2-way", "n-way", "winoground-2x2", "retrieval", "classification")


@dataclass(frozen=True)
class Benchmark:
    name: str
    title: str
    suite: str  # compositionality | zeroshot | retrieval
    shape: str  # one of SHAPES
    source: str  # Hub dataset id or official download of the annotations
    images: str  # where the images come from
    layout: tuple[str, ...]  # paths under <benchmark_dir>/<name>/ that must exist
    protocol: str
    license: str
    verified: str  # how the source and protocol were checked
    read: Callable | None = None  # root -> BenchmarkData
    score: Callable | None = None  # EncodedItems -> results (choice / group shapes)
    hub_repo: str | None = None  # snapshot-downloadable Hub dataset repo
    hub_patterns: tuple[str, ...] | None = None
    fetch: tuple[str, ...] = ()  # shell commands that fetch the files ({root} = the benchmark folder)
    extra: str | None = None  # optional pip extra the official computation needs
    exclude_identical: bool = False  # drop (and count) items whose true caption equals a distractor
    headline: str = "accuracy"  # what the table's cell is
    alt_layout: tuple[str, ...] = ()  # another complete layout the reader also takes (annotation files + images)
    materialize: Callable | None = None  # turns a downloaded Hub snapshot into `layout` (root -> None)
    meta: dict = field(default_factory=dict, hash=False, compare=False)


class BenchmarkError(ValueError):
    """An unknown benchmark name (the message lists the registry)."""


class BenchmarkNotFound(FileNotFoundError):
    """A benchmark's files are not on disk (the message says what is missing and how to fetch it)."""


def _wds(name: str, clip_benchmark_name: str, title: str, suite: str, verified: str, **kw) -> Benchmark:
    repo = f"clip-benchmark/wds_{clip_benchmark_name.replace('/', '-')}"
    shape = "retrieval" if suite == "retrieval" else "classification"
    if shape == "classification":
        protocol = (
            "CLIP_benchmark zeroshot_classification: class embedding = normalised mean of normalised template "
            "embeddings; logits = 100 * image @ classifier; acc1/acc5 by torch.topk (acc5 NaN under 5 classes), "
            "mean_per_class_recall = balanced accuracy of the argmax. Headline: acc1 (top1)."
        )
        layout = ("test/nshards.txt", "classnames.txt")
    else:
        protocol = (
            "CLIP_benchmark zeroshot_retrieval: every caption entry is a gallery item (duplicates kept); R@K = share "
            "of queries with a relevant item in torch.topk's top K. Headline: mean of image->text and text->image R@1."
        )
        layout = ("test/nshards.txt",)
    return Benchmark(
        name=name,
        title=title,
        suite=suite,
        shape=shape,
        source=f"hf://datasets/{repo}",
        images="inside the webdataset shards",
        layout=layout,
        protocol=protocol,
        license=kw.pop("license", "that of the original dataset (CLIP_benchmark re-packages it)"),
        verified=verified,
        hub_repo=repo,
        hub_patterns=("test/*", "*.txt"),
        fetch=(f"hf download {repo} --repo-type dataset --include 'test/*' '*.txt' --local-dir {{root}}",),
        headline="top1" if shape == "classification" else "mean_R@1",
        **kw,
    )


_CB_RULE = "CLIP_benchmark's documented Hub naming wds_{dataset.replace('/', '-')} over benchmark/webdatasets.txt"
_CB_SEEN = "Hub page seen (clip-benchmark/{}), layout from clip_benchmark.datasets.builder.build_wds_dataset"

_ENTRIES = [
    Benchmark(
        name="hnc_test",
        title="HNC test (human-annotated)",
        suite="compositionality",
        shape="2-way",
        source="hf://datasets/patilli/HNC (hnc_clean_strict_test.json)",
        images="GQA images (https://cs.stanford.edu/people/dorarad/gqa/download.html) in images/",
        layout=("hnc_clean_strict_test.json", "images"),
        protocol=(
            "positive > negative (a tie is wrong), micro accuracy over pairs (headline) and per type; a positive "
            "identical to its negative is excluded and counted (identical_pairs), not scored as wrong."
        ),
        license="MIT (Hub dataset card); GQA images under their own terms",
        verified="Hub page patilli/HNC lists hnc_clean_strict_test.json; schema as tests/data/hnc_test_sample.json",
        read=readers.read_hnc_test,
        score=protocols.hnc_test,
        hub_repo="patilli/HNC",
        hub_patterns=("hnc_clean_strict_test.json",),
        fetch=(
            "hf download patilli/HNC hnc_clean_strict_test.json --repo-type dataset --local-dir {root}",
            "# GQA images: unzip images.zip from the GQA download page into {root}/images",
        ),
        exclude_identical=True,
    ),
    Benchmark(
        name="sugarcrepe",
        title="SugarCrepe (7 subsets)",
        suite="compositionality",
        shape="2-way",
        source="https://github.com/RAIVNLab/sugar-crepe (data/<subset>.json)",
        images="COCO val2017 (http://images.cocodataset.org/zips/val2017.zip) in val2017/",
        layout=tuple(f"data/{s}.json" for s in readers.SUGARCREPE_SUBSETS) + ("val2017",),
        protocol=(
            "main_eval.py text_retrieval: 1 if pos_score > neg_score else 0 (a tie is wrong); accuracy per subset; "
            "replace/swap/add = mean of their subsets; headline = mean of the 7 subsets. (CLIP_benchmark's "
            "sugar_crepe task counts a tie as right; this follows the benchmark's own code.)"
        ),
        license="MIT (repository LICENSE); COCO images CC BY 4.0",
        verified="LICENSE read; URLs as clip_benchmark.datasets.builder fetches them; main_eval.py scoring",
        read=readers.read_sugarcrepe,
        score=protocols.sugarcrepe,
        fetch=tuple(
            f"wget -P {{root}}/data https://raw.githubusercontent.com/RAIVNLab/sugar-crepe/main/data/{s}.json"
            for s in readers.SUGARCREPE_SUBSETS
        )
        + ("wget http://images.cocodataset.org/zips/val2017.zip && unzip -q val2017.zip -d {root}",),
    ),
    Benchmark(
        name="sugarcrepe_pp",
        title="SugarCrepe++ (5 subsets)",
        suite="compositionality",
        shape="n-way",
        source="hf://datasets/Aman-J/SugarCrepe_pp (data/<subset>.json)",
        images="COCO val2017 in val2017/",
        layout=tuple(f"data/{s}.json" for s in readers.SUGARCREPE_PP_SUBSETS) + ("val2017",),
        protocol=(
            "scpp VLMs/test_*.py: ITT = cos(I,P1) > cos(I,N) and cos(I,P2) > cos(I,N); TOT = cos(P1,P2) > cos(P1,N) "
            "and cos(P1,P2) > cos(P2,N); strict (a tie is wrong), per subset; headline = ITT mean over subsets."
        ),
        license="CC BY 4.0 (Hub dataset card); COCO images CC BY 4.0",
        verified="Hub page Aman-J/SugarCrepe_pp lists data/*.json; fields: ImageTextClassificationDataset_sc_mod2",
        read=readers.read_sugarcrepe_pp,
        score=protocols.sugarcrepe_pp,
        hub_repo="Aman-J/SugarCrepe_pp",
        hub_patterns=("data/*.json",),
        fetch=(
            "hf download Aman-J/SugarCrepe_pp --repo-type dataset --include 'data/*.json' --local-dir {root}",
            "wget http://images.cocodataset.org/zips/val2017.zip && unzip -q val2017.zip -d {root}",
        ),
        headline="ITT",
    ),
    Benchmark(
        name="aro_vg_relation",
        title="ARO VG-Relation",
        suite="compositionality",
        shape="2-way",
        source="Google Drive ids in ARO's dataset_zoo/aro_datasets.py (mertyg/vision-language-models-are-bows)",
        images="ARO's vgr_vga_images.zip (GQA subset) in images/, cropped to the relation's bbox",
        layout=("visual_genome_relation.json", "images"),
        protocol=(
            "VG_Relation.evaluate_scores: captions [false, true], correct = argmax == 1 (a tie is wrong), accuracy "
            "per "
            "relation; headline = mean over relations not in the notebook's exclusion list."
        ),
        license="MIT (ARO repository); Visual Genome images CC BY 4.0",
        verified="read aro_datasets.py and 'Replicate ARO!' notebook (exclusion list) in the official repository",
        read=readers.read_aro_relation,
        score=protocols.aro_relation,
        fetch=(
            "gdown --id 1kX2iCHEv0CADL8dSO1nMdW-V0NqIAiP3 --output {root}/visual_genome_relation.json",
            "gdown --no-cookies 1qaPlrwhGNMrR3a11iopZUT_GPP_LrgP9 --output {root}/vgr_vga_images.zip && "
            "unzip -q {root}/vgr_vga_images.zip -d {root}",
        ),
        headline="macro_accuracy",
    ),
    Benchmark(
        name="aro_vg_attribution",
        title="ARO VG-Attribution",
        suite="compositionality",
        shape="2-way",
        source="Google Drive ids in ARO's dataset_zoo/aro_datasets.py",
        images="ARO's vgr_vga_images.zip in images/, cropped to the bbox",
        layout=("visual_genome_attribution.json", "images"),
        protocol=(
            "VG_Attribution.evaluate_scores: captions [false, true], argmax == 1 (a tie is wrong), accuracy per "
            "attribute pair '<a1>_<a2>' with >= 25 test cases; headline = their mean."
        ),
        license="MIT (ARO repository); Visual Genome images CC BY 4.0",
        verified="read aro_datasets.py in the official repository",
        read=readers.read_aro_attribution,
        score=protocols.aro_attribution,
        fetch=(
            "gdown --id 13tWvOrNOLHxl3Rm9cR3geAdHx2qR3-Tw --output {root}/visual_genome_attribution.json",
            "gdown --no-cookies 1qaPlrwhGNMrR3a11iopZUT_GPP_LrgP9 --output {root}/vgr_vga_images.zip && "
            "unzip -q {root}/vgr_vga_images.zip -d {root}",
        ),
        headline="macro_accuracy",
    ),
    Benchmark(
        name="aro_coco_order",
        title="ARO COCO-Order",
        suite="compositionality",
        shape="n-way",
        source="https://storage.googleapis.com/sfr-vision-language-research/datasets/coco_karpathy_test.json",
        images="COCO val2014 (http://images.cocodataset.org/zips/val2014.zip) in val2014/",
        layout=("coco_karpathy_test.json", "val2014"),
        protocol=(
            "COCO_Order: per Karpathy-test caption, options [caption, 4 spaCy/NLTK word-order perturbations] through "
            "pre_caption(max_words=30); argmax == 0, so a tie is right; Precision@1. The perturbations need the "
            "optional extra aro-order (spaCy en_core_web_sm, NLTK punkt); they are written once to "
            "coco_karpathy_test_test_cases.json."
        ),
        license="ARO code MIT; Karpathy annotations hosted by Salesforce (BLIP); COCO CC BY 4.0",
        verified="read aro_datasets.py, perturbations.py and retrieval.py (pre_caption) in the official repository",
        read=readers.read_coco_order,
        score=protocols.aro_order,
        fetch=(
            "wget -P {root} https://storage.googleapis.com/sfr-vision-language-research/datasets/"
            "coco_karpathy_test.json",
            "wget http://images.cocodataset.org/zips/val2014.zip && unzip -q val2014.zip -d {root}",
        ),
        extra="aro-order",
        headline="precision@1",
    ),
    Benchmark(
        name="aro_flickr30k_order",
        title="ARO Flickr30k-Order",
        suite="compositionality",
        shape="n-way",
        source="https://storage.googleapis.com/sfr-vision-language-research/datasets/flickr30k_test.json",
        images="Flickr30k images (https://forms.illinois.edu/sec/229675, by request) as named by the annotation",
        layout=("flickr30k_test.json",),
        protocol="as aro_coco_order on the Flickr30k Karpathy test split (argmax == 0: a tie is right).",
        license="ARO code MIT; Flickr30k images for non-commercial research",
        verified="read aro_datasets.py (Flickr30k_Order) in the official repository",
        read=readers.read_flickr_order,
        score=protocols.aro_order,
        fetch=(
            "wget -P {root} https://storage.googleapis.com/sfr-vision-language-research/datasets/flickr30k_test.json",
            "# Flickr30k images: request them at https://forms.illinois.edu/sec/229675, unpack under {root}",
        ),
        extra="aro-order",
        headline="precision@1",
    ),
    Benchmark(
        name="winoground",
        title="Winoground",
        suite="compositionality",
        shape="winoground-2x2",
        source="hf://datasets/facebook/winoground (gated: accept the terms on the Hub first)",
        images="inside the Hub dataset (data/images)",
        layout=("data/examples.jsonl", "data/images"),
        protocol=(
            "text: s(c0,i0) > s(c1,i0) and s(c1,i1) > s(c0,i1); image: s(c0,i0) > s(c0,i1) and s(c1,i1) > s(c1,i0); "
            "group: both (strict, a tie is wrong); per collapsed_tag. Headline: group score."
        ),
        license="Winoground license (Getty Images; research use, see the Hub card)",
        verified="Hub page facebook/winoground; formulas as EqBen's cal_wino_score and the Winoground paper",
        read=readers.read_winoground,
        score=protocols.winoground,
        materialize=readers.materialize_winoground,
        hub_repo="facebook/winoground",
        fetch=("hf download facebook/winoground --repo-type dataset --local-dir {root}  # after accepting the terms",),
        headline="group_score",
    ),
    Benchmark(
        name="valse",
        title="VALSE (11 pieces)",
        suite="compositionality",
        shape="2-way",
        source="https://github.com/Heidelberg-NLP/VALSE (data/*.json)",
        images="per piece (Visual7W, COCO 2017/2014, SWiG, VisDial) in the folders of lxmert_valse_eval.py's DATA",
        layout=("data",),
        protocol=(
            "examples with mturk.caption >= 2 only; pairwise ranking accuracy acc_r = caption > foil (strict); per "
            "piece and instrument; headline = unweighted mean over the pieces present (the official script prints "
            "pieces only)."
        ),
        license="no LICENSE file in the repository index; images under their sources' terms",
        verified="read lxmert_valse_eval.py (DATA paths, mturk filter, acc_r) in the official repository",
        read=readers.read_valse,
        score=protocols.valse,
        fetch=("git clone https://github.com/Heidelberg-NLP/VALSE {root}  # then the images per its README",),
        headline="macro_accuracy",
    ),
    Benchmark(
        name="whatsup",
        title="What'sUp (6 subsets)",
        suite="compositionality",
        shape="n-way",
        source="Google Drive ids in whatsup_vlms' dataset_zoo/aro_datasets.py (amitakamath/whatsup_vlms)",
        images="controlled_images/, controlled_clevr/, val2017/, vg_images/ under data/ (same Drive ids)",
        layout=("data",),
        protocol=(
            "true caption is option 0, argmax == 0 (a tie is right); individual accuracy per subset; controlled A/B "
            "also pair and set accuracy; headline = mean individual accuracy over the subsets present."
        ),
        license="MIT (repository LICENSE)",
        verified="read dataset_zoo/aro_datasets.py (Controlled_Images, COCO_QA, VG_QA) in the official repository",
        read=readers.read_whatsup,
        score=protocols.whatsup,
        fetch=(
            "gdown --id 1ap8mmmpQjLIjPGuplkpBgc1hoEHCj4hm --output {root}/data/controlled_images_dataset.json",
            "gdown --id 1unNNosLbdy9NDjgj4l8fsQP3WiAAGA6z --output {root}/data/controlled_clevr_dataset.json",
            "gdown --id 1RsMdpE9mmwnK4zzMPpC1-wTU_hNis-dq --output {root}/data/coco_qa_one_obj.json",
            "gdown --id 1TCEoM0mgFmz8T4cF7PQ3XJmO6JjtiQ-s --output {root}/data/coco_qa_two_obj.json",
            "gdown --id 1ARMRzRdohs9QTr1gpIfzyUzvW20wYp_p --output {root}/data/vg_qa_one_obj.json",
            "gdown --id 1sjVG5O3QMY8s118k7kQM8zzDZH12i_95 --output {root}/data/vg_qa_two_obj.json",
            "gdown --no-cookies 19KGYVQjrV3syb00GgcavB2nZTW5NXX0H -O {root}/data/c.tgz && "
            "tar -xf {root}/data/c.tgz -C "
            "{root}/data",
        ),
        headline="macro_accuracy",
    ),
    Benchmark(
        name="vl_checklist",
        title="VL-CheckList (ITC)",
        suite="compositionality",
        shape="2-way",
        source="https://github.com/om-ai-lab/VL-CheckList (annotation JSONs, see its DATASETS.md)",
        images="vg/ (VG and VAW), hake/, swig/ as in DATASETS.md",
        layout=("data",),
        protocol=(
            "evaluate.py task itc: correct when the POS[0] score exceeds the NEG[0] score (a tie is wrong); accuracy "
            "per annotation file; category = mean of its files; headline = mean of Attribute, Object, Relation."
        ),
        license="see the repository (annotations); images under VG / HAKE / SWiG terms",
        verified="read vl_checklist/evaluate.py, data_loader.py, corpus/*.yaml and DATASETS.md",
        read=readers.read_vl_checklist,
        score=protocols.vl_checklist,
        fetch=(
            "git clone https://github.com/om-ai-lab/VL-CheckList  # then DATASETS.md; data/ and images into {root}",
        ),
        headline="macro_accuracy",
    ),
    Benchmark(
        name="eqben",
        title="EqBen (labelled release)",
        suite="compositionality",
        shape="winoground-2x2",
        source="https://github.com/Wangt-CN/EqBen (download links in its README)",
        images="images/ of the release",
        layout=("ann.json", "images"),
        protocol=(
            "cal_wino_score: Winoground's text / image / group scores, strict; per sub-dataset; headline: group. "
            "The full benchmark's labels are private (scored by the authors' evaluate_eqben_locally.py); this reads "
            "a labelled release in the 2x2 form [{image0, caption0, image1, caption1}]."
        ),
        license="see the repository",
        verified="read evaluate_eqben_locally.py and example/eqben_eval_CLIP.py; the 2x2 field names are those of "
        "EqBen-derived readers, not checked against a released file",
        read=readers.read_eqben,
        score=protocols.eqben,
        fetch=("# download the EqBen release from https://github.com/Wangt-CN/EqBen into {root} (ann.json, images/)",),
        headline="group_score",
    ),
    Benchmark(
        name="mmvp_vlm",
        title="MMVP-VLM (9 patterns x 15 pairs)",
        suite="compositionality",
        shape="winoground-2x2",
        source="hf://datasets/MMVP/MMVP_VLM",
        images="inside the Hub dataset (MLLM_VLM Images/<type>/<id>.jpg)",
        layout=("Questions.csv", "MLLM_VLM Images"),
        protocol=(
            "scripts/evaluate_vlm.py: text 'a photo of ' + statement; img1 predicted when s(text, img1) > "
            "s(text, img2) "
            "(softmax > 0.5; a tie picks img2); a pair is right when both statements pick their image (odd id -> "
            "img1); per pattern = right / 15; headline = mean over the 9 patterns."
        ),
        license="MIT (Hub dataset card)",
        verified="Hub page MMVP/MMVP_VLM (Questions.csv, MLLM_VLM Images); read tsb0601/MMVP scripts/evaluate_vlm.py",
        read=readers.read_mmvp_vlm,
        score=protocols.mmvp_vlm,
        hub_repo="MMVP/MMVP_VLM",
        fetch=("hf download MMVP/MMVP_VLM --repo-type dataset --local-dir {root}",),
    ),
    _wds(
        "imagenet1k",
        "imagenet1k",
        "ImageNet-1k (val, 50k)",
        "zeroshot",
        _CB_SEEN.format("wds_imagenet1k"),
        license="ImageNet terms of access (non-commercial research)",
    ),  # fmt: skip
    _wds("cifar10", "vtab/cifar10", "CIFAR-10 (test)", "zeroshot", _CB_RULE, license="CIFAR: no license stated"),
    _wds("cifar100", "vtab/cifar100", "CIFAR-100 (test)", "zeroshot", _CB_RULE, license="CIFAR: no license stated"),
    _wds("imagenetv2", "imagenetv2", "ImageNetV2", "zeroshot", _CB_RULE),
    _wds("imagenet_sketch", "imagenet_sketch", "ImageNet-Sketch", "zeroshot", _CB_RULE),
    _wds("imagenet-a", "imagenet-a", "ImageNet-A", "zeroshot", _CB_SEEN.format("wds_imagenet-a")),
    _wds("imagenet-r", "imagenet-r", "ImageNet-R", "zeroshot", _CB_RULE),
    _wds("imagenet-o", "imagenet-o", "ImageNet-O", "zeroshot", _CB_SEEN.format("wds_imagenet-o")),
    _wds("objectnet", "objectnet", "ObjectNet", "zeroshot", _CB_RULE),
    _wds("fer2013", "fer2013", "FER2013", "zeroshot", _CB_RULE),
    _wds("voc2007", "voc2007", "PASCAL VOC 2007", "zeroshot", _CB_RULE),
    _wds("sun397", "sun397", "SUN397", "zeroshot", _CB_RULE),
    _wds("cars", "cars", "Stanford Cars", "zeroshot", _CB_RULE),
    _wds("fgvc_aircraft", "fgvc_aircraft", "FGVC Aircraft", "zeroshot", _CB_RULE),
    _wds("mnist", "mnist", "MNIST", "zeroshot", _CB_RULE),
    _wds("stl10", "stl10", "STL-10", "zeroshot", _CB_RULE),
    _wds("gtsrb", "gtsrb", "GTSRB", "zeroshot", _CB_RULE),
    _wds("country211", "country211", "Country211", "zeroshot", _CB_RULE),
    _wds("renderedsst2", "renderedsst2", "Rendered SST2", "zeroshot", _CB_RULE),
    _wds("caltech101", "vtab/caltech101", "Caltech-101 (VTAB)", "zeroshot", _CB_RULE),
    _wds("dtd", "vtab/dtd", "DTD (VTAB)", "zeroshot", _CB_RULE),
    _wds("eurosat", "vtab/eurosat", "EuroSAT (VTAB)", "zeroshot", _CB_RULE),
    _wds("flowers", "vtab/flowers", "Oxford Flowers (VTAB)", "zeroshot", _CB_RULE),
    _wds("pets", "vtab/pets", "Oxford-IIIT Pets (VTAB)", "zeroshot", _CB_RULE),
    _wds("pcam", "vtab/pcam", "PatchCamelyon (VTAB)", "zeroshot", _CB_RULE),
    _wds("resisc45", "vtab/resisc45", "RESISC45 (VTAB)", "zeroshot", _CB_RULE),
    _wds("svhn", "vtab/svhn", "SVHN (VTAB)", "zeroshot", _CB_RULE),
    _wds(
        "coco_5k",
        "mscoco_captions",
        "COCO 5k (Karpathy test, 5 captions per image)",
        "retrieval",
        _CB_RULE,
        license="COCO annotations CC BY 4.0",
        alt_layout=("coco_karpathy_test.json", "val2014"),
        meta={"annotation": "coco_karpathy_test.json", "image_folder": ""},
    ),  # fmt: skip
    _wds(
        "flickr30k_1k",
        "flickr30k",
        "Flickr30k 1k (Karpathy test, 5 captions per image)",
        "retrieval",
        _CB_RULE,
        license="Flickr30k: non-commercial research",
        alt_layout=("flickr30k_test_karpathy.txt", "flickr30k-images"),
        meta={"annotation": "flickr30k_test_karpathy.txt", "image_folder": "flickr30k-images"},
    ),  # fmt: skip
]

REGISTRY: dict[str, Benchmark] = {b.name: b for b in _ENTRIES}
SUITES: dict[str, tuple[str, ...]] = {
    suite: tuple(b.name for b in _ENTRIES if b.suite == suite)
    for suite in ("compositionality", "zeroshot", "retrieval")
}
SUITES["all"] = tuple(REGISTRY)

# Files of a known layout, as `--task pairwise --data_file X` names them (X's layout detected by
# `hnc_clip.evaluation.formats.detect_format`): layout -> reader(path) -> `BenchmarkData` of 2-way items whose image
# paths are relative to `--image_dir`. The benchmarks above read their files with the same readers.
FILE_LAYOUTS: dict[str, Callable] = {
    TEST_SCHEMA: functools.partial(readers.read_hnc_file, schema=TEST_SCHEMA),
    TRAIN_SCHEMA: functools.partial(readers.read_hnc_file, schema=TRAIN_SCHEMA),
    "structure_clip": readers.read_structure_clip_file,
    "sugarcrepe": readers.read_sugarcrepe_file,
    "aro_vg_relation": functools.partial(readers.read_aro_file, kind="relation"),
    "aro_vg_attribution": functools.partial(readers.read_aro_file, kind="attribution"),
}


def registry_listing() -> str:
    lines = [f"  suites: {', '.join(f'{s} ({len(v)})' for s, v in SUITES.items())}"]
    lines += [f"  - {b.name}: {b.title} [{b.suite}, {b.shape}] from {b.source}" for b in _ENTRIES]
    return "\n".join(lines)


def expand(names) -> list[Benchmark]:
    """Benchmarks for names and suite names, in the order given, each once; `BenchmarkError` lists the registry."""
    out: dict[str, Benchmark] = {}
    for name in [names] if isinstance(names, str) else names:
        key = name.strip().lower()
        if key in SUITES:
            out.update({n: REGISTRY[n] for n in SUITES[key]})
        elif key in REGISTRY:
            out[key] = REGISTRY[key]
        else:
            raise BenchmarkError(f"unknown benchmark {name!r}; the registry has:\n{registry_listing()}")
    return list(out.values())


def _missing(bench: Benchmark, root: str) -> list[str]:
    missing = [p for p in bench.layout if not os.path.exists(os.path.join(root, p))]
    if missing and bench.alt_layout and all(os.path.exists(os.path.join(root, p)) for p in bench.alt_layout):
        return []
    return missing


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes") or os.environ.get(
        "HF_DATASETS_OFFLINE", "0"
    ).lower() in ("1", "true", "yes")


def not_found(bench: Benchmark, root: str, missing: list[str], why: str = "") -> BenchmarkNotFound:
    commands = "\n".join(f"    {c.format(root=root)}" for c in bench.fetch)
    extra = f"\n  optional extra needed: pip install 'hnc-clip[{bench.extra}]'" if bench.extra else ""
    return BenchmarkNotFound(
        f"benchmark {bench.name!r} ({bench.title}) is not under {root}: missing {missing}{why}.\n"
        f"  source: {bench.source}\n  images: {bench.images}\n  fetch with:\n{commands}{extra}\n"
        f"  or pass --benchmark_dir DIR holding {bench.name}/ in this layout: {list(bench.layout)}"
    )


def _snapshot(bench: Benchmark, root: str, cache_dir: str | None) -> None:
    from huggingface_hub import snapshot_download

    snapshot_download(
        bench.hub_repo, repo_type="dataset", local_dir=root, allow_patterns=bench.hub_patterns, cache_dir=cache_dir
    )


def locate(bench: Benchmark, benchmark_dir: str, cache_dir: str | None = None, download: bool = True) -> str:
    """The benchmark's folder `<benchmark_dir>/<name>` once its layout is complete, downloading from the Hub when the
    entry has a Hub source and the Hub may be used; otherwise `BenchmarkNotFound` with the fetch commands."""
    root = os.path.abspath(os.path.join(os.path.expanduser(benchmark_dir), bench.name))
    missing = _missing(bench, root)
    if missing and bench.hub_repo and download and not _offline():
        try:
            _snapshot(bench, root, cache_dir)
        except Exception as err:  # any hub failure (gated repo, no network) becomes the same clear message
            raise not_found(bench, root, missing, f" (download from {bench.hub_repo} failed: {err})") from err
        missing = _missing(bench, root)
    if missing and bench.materialize is not None and os.path.isdir(root):
        bench.materialize(root)
        missing = _missing(bench, root)
    if missing:
        raise not_found(bench, root, missing, " (offline: HF_HUB_OFFLINE is set)" if _offline() else "")
    return root


@functools.cache
def registry_table() -> str:
    """Markdown table of every benchmark: source, protocol, license (eval/README.md is checked against it)."""
    rows = ["| benchmark | suite | shape | source | protocol | license |", "|---|---|---|---|---|---|"]
    for b in _ENTRIES:
        rows.append(f"| `{b.name}` | {b.suite} | {b.shape} | {b.source} | {b.protocol} | {b.license} |")
    return "\n".join(rows)
