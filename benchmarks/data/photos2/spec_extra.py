"""The extra training photographs: sources, exclusions and rules (see README.md).

This is an addition to ../../training_photos/ (the second edition of the training set). It only
takes photographs from packages that set does not use, and the build drops anything that is a
near-duplicate of that set, of photos/val, or of another source here. Every entry below was
chosen by looking at contact sheets of all candidate images of the package; the reasons for
what was left out are in the comments. Paths are globs relative to the unpacked package root.
"""
# ruff: noqa: E501  (a table of package paths)
from __future__ import annotations

# --- never downloaded, never used (same as training_photos/spec.py) ----------------------------
DENY_PACKAGE_RE = r"^(lomiri-wallpapers.*|plasma-workspace-wallpapers|librust-tiff-dev)$"
DENY_FILE_RE = r"(?i)(^|/)kodim[^/]*$"

# --- packages: name -> (suite, version) --------------------------------------------------------
# "bookworm" means bookworm + bookworm-updates + bookworm-security; "sid" is unstable.
PACKAGES: dict[str, tuple[str, str]] = {
    "ukui-wallpapers": ("sid", "20.04.4-1"),
    "forensics-samples-files": ("bookworm", "1.1.4-5"),
    "tuxtype-data": ("bookworm", "1.8.3-5.1"),
    "tuxpaint-data": ("bookworm", "1:0.9.28-sdl2-1"),
    "scribus-template": ("bookworm", "1.2.4.1-6"),
    "hugin-data": ("bookworm", "2022.0.0+dfsg-2"),
    "afterstep-data": ("bookworm", "2.2.12-15"),
    "darktable": ("bookworm", "4.2.1-4"),
    "digikam-data": ("bookworm", "4:7.9.0-1"),
    "gimp-data": ("bookworm", "2.10.34-1+deb12u10"),
    "golang-github-disintegration-gift-dev": ("bookworm", "1.2.1-3"),
    "golang-github-disintegration-imaging-dev": ("bookworm", "1.6.2-2"),
    "golang-golang-x-image-dev": ("bookworm", "0.5.0-1"),
    "librust-jpeg-decoder-dev": ("bookworm", "0.2.6-1"),
    "python3-scipy": ("bookworm", "1.10.1-2"),
    # a newer version of a package that training_photos uses (0.9.8 there): only its new
    # pictures can get in, because every picture of 0.9.8 is a duplicate of training_photos
    "endless-sky-high-dpi": ("sid", "0.11.0-1"),
    "stellarium-data": ("sid", "26.3-1"),          # 0.22.2-1 in training_photos
}
# packages here that training_photos also uses (in an older version): MANIFEST.tsv marks their
# images tier=newer-version, all others tier=new-package, so they can be dropped by one filter
NEWER_VERSION_OF_USED = ("endless-sky-high-dpi", "stellarium-data")
# For these, a file whose name training_photos already lists (MANIFEST.tsv or EXCLUDED.tsv) is
# left out even when its pixels changed: a Stellarium texture keeps its name when it is
# reprocessed, so a new file under an old name is the same photograph. (Endless Sky 0.11 put
# different pictures under 25 old names; those are kept when the pixels differ.)
SAME_NAME_IS_SAME_PHOTO = ("stellarium-data",)

# Big packages: recipe.sh extracts only these paths (tar wildcards).
EXTRACT_ONLY = {
    "endless-sky-high-dpi": "*/images/land/*",
    "stellarium-data": "*/nebulae/*",
}

# Whole packages held out of training (the team measures the gap on packages never seen).
HELDOUT_PACKAGES = ("tuxpaint-data", "scribus-template")

TT = "usr/share/tuxtype/images/"
HG = "usr/share/hugin/xrc/data/help_en_EN/"
GO = "usr/share/gocode/src/"

# (package, glob, [regex excludes on the relative path], fmin)
SOURCES: list[tuple[str, str, list[str], int]] = [
    # UKUI wallpapers (Debian sid, 3840x2160): 15 photographs. Out, as renders/vector art:
    # 2004default, calla, city, desert, firstgeneration, fluent-color, focal-ubuntukylin,
    # goldfish, planet-ascending, rhythm, rollpaper, string, the-mouse (the bookworm version
    # of the package has only these renders).
    ("ukui-wallpapers", "usr/share/backgrounds/*.jpg",
     [r"/(2004default|firstgeneration|planet-ascending|rhythm|string|the-mouse)\.jpg$"], 2),
    # Forensics course samples: six phone photographs (dogs, a street, a circuit board, a
    # dining room). Out: the Debian logos (debian.png/.ppm, d-debian.*).
    ("forensics-samples-files", "usr/share/forensics-samples/original-files/pic*/IMG*", [], 2),
    # Tux Typing: landscape photographs (kcas*), a seal (hidden.jpg) and the five backgrounds
    # (three Hubble/Spitzer deep-sky photographs, Saturn from Cassini, a Martian sunset).
    # Out: keyboard pictures, tutorial renders, main_bkg/pract (renders).
    ("tuxtype-data", TT + "kcas*.jpg", [], 2),
    ("tuxtype-data", TT + "hidden.jpg", [], 2),
    ("tuxtype-data", TT + "backgrounds/[0-4].jpg", [], 2),
    # Tux Paint templates: 19 photographs (bark, cliff, jellyfish, lighthouse, sheep, ...).
    # Starters are line art or have transparency, except the reef and San Francisco skyline
    # backgrounds. The rest (frames, maps, drawings) is out.
    ("tuxpaint-data", "usr/share/tuxpaint/templates/*.jpg", [], 2),
    ("tuxpaint-data", "usr/share/tuxpaint/starters/reef-back.png", [], 2),
    ("tuxpaint-data", "usr/share/tuxpaint/starters/skyline-sf-dusk-back.jpeg", [], 2),
    # Scribus templates: eclipse and moon photographs, a canyon, a sunset, a pizza, a
    # black-and-white kite picture, three portraits.
    ("scribus-template", "usr/share/scribus/templates/br2/*.jpg", [], 2),
    ("scribus-template", "usr/share/scribus/templates/cal2/moon.jpg", [], 2),
    ("scribus-template", "usr/share/scribus/templates/menu2/pizza.jpg", [], 2),
    ("scribus-template", "usr/share/scribus/templates/nl1-bw/kites-bw.png", [], 2),
    ("scribus-template", "usr/share/scribus/templates/scribus_project_de/*.jpg", [], 2),
    # Hugin manual: one camera original per subject. Out: the other projections of Big Ben
    # and Medinet Habu (geometric remaps of one picture), the enlarged CA crops, the
    # checkerboards, screenshots and diagrams.
    ("hugin-data", HG + "Big_ben_rectilinear.jpg", [], 2),
    ("hugin-data", HG + "CA_fringes00.jpg", [], 2),
    ("hugin-data", HG + "CA_tCA00.jpg", [], 2),
    # (fotoxx-common was looked at and left out: its one usable-looking picture, flatten2.jpg,
    # is a before/after pair stacked in one file; unbend2/3 are too small; the rest of its
    # manual is screenshots and edited examples.)
    # Single photographs from other packages.
    ("afterstep-data", "usr/share/afterstep/desktop/tiles/rose512.jpg", [], 2),
    ("darktable", "usr/share/darktable/style/image-1.jpg", [], 2),
    ("digikam-data", "usr/share/digikam/about/images/body-background.jpg", [], 2),
    ("gimp-data", "usr/share/gimp/2.0/scripts/images/beavis.jpg", [], 2),     # grey cat photo
    # Go image libraries' test pictures (lossless PNG originals preferred; JPEG copies of the
    # same pictures are left to the dedupe). Out: the processed variants, the tux drawing and
    # the rose with transparency.
    ("golang-github-disintegration-gift-dev", GO + "github.com/disintegration/gift/testdata/src.jpg", [], 2),
    ("golang-github-disintegration-imaging-dev", GO + "github.com/disintegration/imaging/testdata/branches.png", [], 2),
    ("golang-github-disintegration-imaging-dev", GO + "github.com/disintegration/imaging/testdata/flowers.png", [], 2),
    ("golang-golang-x-image-dev", GO + "golang.org/x/image/testdata/blue-purple-pink-large.png", [], 2),
    # jpeg-decoder benchmark pictures: a hibiscus and the Eiffel tower (its grey and
    # progressive copies are duplicates).
    ("librust-jpeg-decoder-dev", "usr/share/cargo/registry/jpeg-decoder-0.2.6/benches/large_image.jpg", [], 2),
    ("librust-jpeg-decoder-dev", "usr/share/cargo/registry/jpeg-decoder-0.2.6/benches/tower.jpg", [], 2),
    # Endless Sky 0.11 landing pictures (1440x720 @2x copies). 0.11 has 268 pictures that 0.9.8
    # lacks: photographs of fields, fog, forests, cities, snow, water, corridors and stations.
    # Out: nasa* (Juno's Jupiter with heavily enhanced colours, as in training_photos),
    # sivael* and loc3 (rendered ship interiors), canyon12, lava9, mars2, mars3 (a planet
    # composited into the sky), mercury1 (render), dokimi, gliese, methuselah, occupas, redias,
    # station6, station7 (abstract, heavily graded or possibly rendered), hills7-harro (as in
    # training_photos).
    ("endless-sky-high-dpi", "usr/share/games/endless-sky/plugins/endless-sky-high-dpi/images/land/*@2x.*",
     [r"/(nasa\d+|sivael\d+|loc3|canyon12|lava9|mars[23]|mercury1|dokimi|gliese|methuselah|occupas"
      r"|redias|station[67]|hills7-harro)@2x\.[A-Za-z]+$"], 2),
    # Stellarium 26.3 deep-sky textures: telescope photographs of galaxies, clusters and nebulae
    # (some in narrow-band false colour), 154 more than 0.22 has. All new ones were looked at;
    # none is a drawing. Files with transparency are skipped by the build.
    ("stellarium-data", "usr/share/stellarium/nebulae/default/*.png", [], 2),
    # SciPy's raccoon face (scipy.misc.face): raw 1024x768 RGB, bz2-compressed.
    ("python3-scipy", "usr/lib/python3/dist-packages/scipy/misc/face.dat", [], 2),
]

# --- downsampling ------------------------------------------------------------------------------
# First factor f0: the smallest >= fmin that brings the short side to at most MAX_OUT_SHORT
# (as in training_photos). Further images at 2*f0, 3*f0, 4*f0 while the short side stays
# >= MIN_OUT_SHORT_MULTI.
MAX_OUT_SHORT = 1600
MIN_OUT_SHORT = 160
MIN_OUT_SHORT_MULTI = 256
MULTIPLES = (1, 2, 3, 4)
JPEG_Q_SKIP = 50
JPEG_Q_HARD = 70

# --- near-duplicates (training_photos' fingerprints: 64-bit dHash + 16x16 z-scored thumbnail)
DUP_RULES = ((8, 0.2),)                 # among the extra sources, and against training_photos
VAL_RULES = ((12, 0.3), (20, 0.2))      # against photos/val

WEBP_EFFORT = 50
WEBP_METHOD = 4
