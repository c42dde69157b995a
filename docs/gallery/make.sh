#!/usr/bin/env bash
# The README's gallery, remade from the models shipped in the package. Every command runs
# as it is right after install (`rgflow` on the PATH), from the repository root, on any
# machine: the images come from `rgflow make-msds`, the mask is docs/gallery/mask-8x8.png.
# About 3 minutes on 2 CPU cores (the probe encodes 12,000 images).
set -euo pipefail
if [[ "${1:-}" == "--help" ]]; then
    echo "usage: bash docs/gallery/make.sh   (remakes docs/gallery/ from the built-in models)"
    exit 0
fi
cd "$(dirname "$0")/../.."
G=docs/gallery

rgflow make-msds msds1 --out demo --train 1 --test 16
rgflow make-msds msds2 --out demo --train 1 --test 16
T=demo/msds1/test

rgflow sample -c msds1 -n 64 --level-temperature 0=0.2,1=0.8 --zoom 2 -o $G/samples-mixed.png --device cpu
rgflow sample -c msds1 -n 64 -t 0.8 --zoom 2 -o $G/samples-t08.png --device cpu
rgflow mix -c msds1 $T/000000.png $T/000001.png --all-scales -o $G/mix-all.png --device cpu
rgflow mix -c msds2 demo/msds2/test/000000.png demo/msds2/test/000001.png --all-scales -o $G/mix-all-msds2.png --device cpu
rgflow receptive-field -c msds1 -o $G/rf.png --device cpu
rgflow probe -c msds1 --max-images 10000 -o $G/probe-msds1.png --device cpu
rgflow traverse -c msds1 --level 3 --top 4 --data $T -o $G/traverse-l3.gif --device cpu
rgflow walk -c msds1 --level 2 --steps 24 -n 2 --zoom 3 -o $G/walk-l2.gif --device cpu
rgflow inpaint -c msds1 $T/000003.png $G/mask-8x8.png --method mean -o demo/filled.png \
    --compare $G/inpaint-panel.png --original $T/000003.png --device cpu
