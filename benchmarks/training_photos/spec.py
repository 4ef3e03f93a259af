"""What goes into the training photo set, and what must never go in.

Every decision here was made by looking at contact sheets of the candidates; the reasons are in
the comments and in README.md. Paths are globs relative to the unpacked package root.
"""
# ruff: noqa: E501  (a table of package paths: one source per line reads better than wrapped globs)
from __future__ import annotations

# --- never downloaded, never used -------------------------------------------------------------
# Reserved for evaluation. recipe.sh refuses to download any package matching these, and
# build.py refuses any source path matching DENY_FILE_RE (tar also skips kodim* on extraction).
DENY_PACKAGE_RE = r"^(lomiri-wallpapers.*|plasma-workspace-wallpapers)$"
DENY_FILE_RE = r"(?i)(^|/)kodim[^/]*$"
# Packages known (from the archive's Contents index) to ship kodim* files: not downloaded at all.
DENY_PACKAGES_SHIPPING_KODAK = ("librust-tiff-dev",)

# --- packages: name -> (suite, version) ---------------------------------------------------------
# Versions are pinned so that the set is rebuilt from the same bytes; recipe.sh stops if the
# archive no longer serves a pinned version.
PACKAGES: dict[str, tuple[str, str]] = {
    # today's training sources (../shared/data/photos/recipe.sh)
    "mate-backgrounds": ("bookworm", "1.26.0-1"),
    "mate-screensaver-common": ("bookworm", "1.26.1-1+deb12u1"),
    "lxqt-themes": ("bookworm", "1.2.0-1"),
    "lifeograph": ("bookworm", "2.0.3-1"),
    "liblemonldap-ng-portal-perl": ("bookworm", "2.16.1+ds-deb12u10"),
    "palapeli-data": ("bookworm", "4:22.12.3-1"),
    "gnome-control-center-data": ("bookworm", "1:43.6-2~deb12u1"),
    "gcompris-qt-data": ("bookworm", "3.1-2"),
    "scratch": ("bookworm", "1.4.0.6~dfsg1-6.1"),
    "opencv-doc": ("bookworm", "4.6.0+dfsg-12"),
    "python3-skimage": ("bookworm", "0.19.3-8"),
    "python3-sklearn": ("bookworm", "1.2.1+dfsg-1"),
    "python-matplotlib-data": ("bookworm", "3.6.3-1"),
    "libdlib19.1": ("bookworm", "19.24+dfsg-1"),
    "labelme-examples": ("bookworm", "5.1.1-1"),
    # new sources
    "endless-sky-high-dpi": ("bookworm", "0.9.8-1"),
    "krank": ("bookworm", "0.7+dfsg2-4"),
    "stellarium-data": ("bookworm", "0.22.2-1"),
    "kphotoalbum": ("bookworm", "5.9.1-1"),
    "zoph": ("bookworm", "1.0.1-3"),
    "psychtoolbox-3-common": ("bookworm", "3.0.18.12.dfsg1-1.1"),
    "gimp-help-en": ("bookworm", "2.10.34-2"),
    "kodi-data": ("bookworm", "2:20.1+dfsg-1"),
    "libsixel-examples": ("bookworm", "1.10.3-3"),
    "budgie-backgrounds": ("trixie", "3.0-1"),
}

# gcompris ships its images inside Qt .rcc bundles; these are extracted to <pkg>/_rcc/<bundle>/.
GCOMPRIS_BUNDLES = ("explore_monuments", "explore_world_animals", "explore_farm_animals",
                    "explore_world_music", "erase", "clickgame", "details")

CV = "usr/share/doc/opencv-doc/examples/"
SCR = "usr/share/scratch/Media/Backgrounds/"
GC = "_rcc/"
ES = "usr/share/games/endless-sky/plugins/endless-sky-high-dpi/images/land/"
PTB = "usr/share/psychtoolbox-3/"
GH = "usr/share/gimp/2.0/help/en/images/tutorials/tone-mapping/"

# (package, glob, [regex excludes on the relative path], fmin)
# fmin: smallest integer downsampling factor for the entry (3 where the sources are soft or
# carry visible compression noise at factor 2).
SOURCES: list[tuple[str, str, list[str], int]] = [
    # ---- today's training sources, same selection as ../shared/data/photos/recipe.sh ----
    ("mate-backgrounds", "usr/share/backgrounds/mate/nature/*.jpg", [], 2),
    ("mate-screensaver-common", "usr/share/backgrounds/cosmos/*.jpg", [], 2),
    ("lxqt-themes", "usr/share/lxqt/wallpapers/*.*",
     [r"origami|triangles|logo|simple_blue|plasma|kde-plasma"], 2),
    ("lifeograph", "usr/share/net.sourceforge.Lifeograph/backgrounds/*.jpg", [], 2),
    ("liblemonldap-ng-portal-perl",
     "usr/share/lemonldap-ng/portal/htdocs/static/common/backgrounds/*.jpg", [], 2),
    ("palapeli-data", "usr/share/palapeli/collection/*.jpg", [], 2),
    ("gnome-control-center-data", "usr/share/pixmaps/faces/*.jpg", [], 2),
    ("gcompris-qt-data", GC + "explore_monuments/gcompris/src/activities/explore_monuments/resource/*/*.webp", [], 2),
    ("gcompris-qt-data", GC + "explore_world_animals/gcompris/src/activities/explore_world_animals/resource/animals/*.webp", [], 2),
    ("gcompris-qt-data", GC + "explore_farm_animals/gcompris/src/activities/explore_farm_animals/resource/animals/*.webp", [], 2),
    ("gcompris-qt-data", GC + "explore_world_music/gcompris/src/activities/explore_world_music/resource/music/*.webp", [], 2),
    ("gcompris-qt-data", GC + "erase/gcompris/src/activities/erase/resource/*.webp", [], 3),
    ("gcompris-qt-data", GC + "clickgame/gcompris/src/activities/clickgame/resource/sea*.webp", [], 3),
    ("gcompris-qt-data", GC + "details/gcompris/src/activities/details/resource/image/*_background.webp",
     [r"Gogh|Eglise|PereTanguy"], 2),  # paintings
    ("scratch", SCR + "Nature/*.jpg", [r"woods-and-bench|/moon\.jpg"], 2),
    ("scratch", SCR + "Sports/*.jpg", [r"basketball"], 2),
    ("scratch", SCR + "Outdoors/*.jpg", [r"school2|graffiti|brick-wall1"], 2),
    ("scratch", SCR + "Indoors/*.jpg", [r"room[0-9]|chalkboard|spotlight|party-room"], 2),
    ("opencv-doc", CV + "data/*.*",
     [r"^(?!.*/(fruits|baboon|leuvenA|ela_original|squirrel_cls|home|aloeL|board|orange"
      r"|stuff|rubberwhale1|messi5|graf1|left|aero1|apple|butterfly|building|sudoku)\.(jpg|png)$)"], 2),
    ("opencv-doc", CV + "alphamat/input_images/plant.jpg", [], 2),
    ("opencv-doc", CV + "reg/home.png", [], 2),
    ("opencv-doc", CV + "dnn_superres/butterfly.png", [], 2),
    ("opencv-doc", CV + "hfs/data/*.jpg", [], 2),
    ("opencv-doc", CV + "text/scenetext0*.jpg", [], 2),
    ("opencv-doc", CV + "text/scenetext_segmented_word0?.jpg", [], 2),
    ("python3-skimage", "usr/lib/python3/dist-packages/skimage/data/*.*",
     [r"^(?!.*/(astronaut|coffee|chelsea|motorcycle_left)\.png$|.*/rocket\.jpg$)"], 2),
    ("python3-sklearn", "usr/lib/python3/dist-packages/sklearn/datasets/images/*.jpg", [], 2),
    ("python-matplotlib-data", "usr/share/matplotlib/mpl-data/sample_data/grace_hopper.jpg", [], 2),
    ("libdlib19.1", "usr/share/doc/libdlib19.1/examples/faces/*.jpg", [r"bald_guys|dogs"], 2),
    ("libdlib19.1", "usr/share/doc/libdlib19.1/examples/mmod_cars_test_image*.jpg", [], 2),
    ("labelme-examples", "usr/share/doc/labelme-examples/examples/bbox_detection/data_annotated/*.jpg", [], 2),
    ("labelme-examples", "usr/share/doc/labelme-examples/examples/classification/data_annotated/*.jpg", [], 2),
    ("labelme-examples", "usr/share/doc/labelme-examples/examples/tutorial/apc2016_obj3.jpg", [], 2),
    ("labelme-examples", "usr/share/doc/labelme-examples/examples/video_annotation/data_annotated/00000100.jpg", [], 2),
    # ---- new sources ----
    # Endless Sky planet-landing pictures: landscapes, cities, coasts, launch sites (1440x720).
    # Out: nasa9 (Juno's Jupiter, heavily enhanced colour), hills7-harro (abstract light streaks).
    # The 1x copies in endless-sky-data are the same pictures at half size: not used.
    ("endless-sky-high-dpi", ES + "*.jpg", [r"/nasa9@2x\.jpg$", r"/hills7-harro@2x\.jpg$"], 2),
    # Krank level backgrounds: underwater reef photographs, 2000x1500.
    ("krank", "usr/share/games/krank/levels/unera-backgrounds/*.jpg", [], 2),
    # Stellarium deep-sky textures: telescope photographs of galaxies and nebulae (512-2048 px).
    # Landscapes (sky cut out with alpha), sky-culture art (drawings) and planet textures
    # (renders/mosaics) are not used. Files with transparency are skipped by build.py.
    ("stellarium-data", "usr/share/stellarium/nebulae/default/*.png", [], 2),
    # KPhotoAlbum demo album: snapshots of people, pets, landscapes.
    ("kphotoalbum", "usr/share/kphotoalbum/demo/*.jpg", [], 2),
    # Zoph page backgrounds: two macro photographs (fir sprig, dahlia), 18 MP each.
    ("zoph", "usr/share/zoph/www/php/templates/default/images/backgrounds/*.jpg", [], 2),
    # Psychtoolbox demo stimuli: rabbits, a street, apples. Out: the grey/blurred variants and
    # noise textures (synthetic).
    ("psychtoolbox-3-common", PTB + "PsychDemos/konijntjes1024x768.jpg", [], 2),
    ("psychtoolbox-3-common", PTB + "PsychDemos/PsychExampleExperiments/OldNewRecognition/stims/*.jpg", [], 2),
    ("psychtoolbox-3-common", PTB + "PsychDemos/OpenGL4MatlabDemos/MorphDemo/TeapotTexture.jpg", [], 2),
    ("psychtoolbox-3-common", PTB + "PsychHardware/EyelinkToolbox/EyelinkDemos/SR-ResearchDemo/town.jpg", [], 2),
    # GIMP manual, tone-mapping tutorial: the camera originals only (the tutorial's edited
    # versions of the same pictures are near-duplicates; the rest of the manual is screenshots).
    ("gimp-help-en", GH + "apple-orchard-truck-from-camera.jpg", [], 2),
    ("gimp-help-en", GH + "power-lines.jpg", [], 2),
    ("gimp-help-en", GH + "tree-exposed-for-sky-ground-is-dark.jpg", [], 2),
    # Kodi Estuary skin home images: a cinema hall and a concert crowd (photographs). The rest
    # of kodi-data is UI screenshots, renders and device pictures.
    ("kodi-data", "usr/share/kodi/addons/skin.estuary/extras/home-images/movie.jpg", [], 2),
    ("kodi-data", "usr/share/kodi/addons/skin.estuary/extras/home-images/music.jpg", [], 2),
    # libsixel test pictures: a snake (lossless PNG; its JPEG/GIF/PPM copies are duplicates)
    # and an egret.
    ("libsixel-examples", "usr/share/doc/libsixel-examples/examples/images/snake.png", [], 2),
    ("libsixel-examples", "usr/share/doc/libsixel-examples/examples/images/egret.jpg", [], 2),
    # Budgie wallpapers (Debian trixie): 3840x2160/2560 photographs. Out: ocean-waves (a
    # woodblock print), valley-midnight and waves-midnight (flat vector renders).
    ("budgie-backgrounds", "usr/share/backgrounds/budgie/*.jpg",
     [r"/(ocean-waves|valley-midnight|waves-midnight)\.jpg$"], 2),
]

# --- downsampling ------------------------------------------------------------------------------
MAX_OUT_SHORT = 1600      # first factor f is the smallest >= fmin that brings the short side to this
MIN_OUT_SHORT = 160       # the first factor's output must keep at least this short side
MIN_OUT_SHORT_2F = 256    # the second image (factor 2f) is made only if its short side is >= this
JPEG_Q_SKIP = 50          # estimated IJG quality below this: source skipped
JPEG_Q_HARD = 70          # below this: fmin raised to 3

# --- near-duplicate rules (perceptual hashes of a small greyscale thumbnail) ------------------
# d: Hamming distance of 64-bit dHashes (9x8 gradients); z: mean absolute difference of 16x16
# thumbnails each scaled to mean 0, sd 1 (unrelated photos: z ~ 1; one photo at two sizes:
# z < 0.15; unrelated landscapes or centred galaxies can reach z ~ 0.35). dHash alone is weak
# on dark, smooth pictures (galaxies, dunes, fog): always ask z too.
DUP_RULES = ((8, 0.2),)                    # duplicate if d <= D and z <= Z for any (D, Z)
VAL_RULES = ((12, 0.3), (20, 0.2))         # against val: looser (one photo at other sizes: d <= 4, z <= 0.14)

# --- output ------------------------------------------------------------------------------------
SHARD_MAX_BYTES = 60 * 2**20
WEBP_EFFORT = 50          # Pillow lossless quality (= effort), method 4: ~4 MP/s, pixels exact
WEBP_METHOD = 4
