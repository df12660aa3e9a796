#!/usr/bin/env bash
# Runs on the real GPU host (no Ansible, no network): ansible-core from the wheels carried in .whl/
# (already on PYTHONPATH, see docs/driver_toolkit.md), then
#   $OUT/check_driver_probes.txt  what the driver role reads, read by hand (read-only commands)
#   $OUT/check_driver.txt         tests/realgpu/check_driver.yml with --check --diff, and its exit code
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
OUT=${OUT:?set OUT}
SMI=/usr/local/nvidia/bin/nvidia-smi

probe() { echo "### $*"; bash -c "$*" 2>&1; echo "### rc=$?"; }
{
  probe "date -u; uname -a; id -u"
  probe "grep -E '^(PRETTY_NAME|VERSION_ID)=' /etc/os-release"
  probe "python3 --version; command -v nvidia-smi; ls -l $SMI"
  probe "$SMI --version"
  probe "cat /proc/driver/nvidia/version"
  probe "cat /sys/module/nvidia/version"
  probe "dpkg-query -W -f '\${Package}\t\${Version}\t\${db:Status-Abbrev}\n' | grep -iE 'nvidia|cuda|libnv' || echo '(no NVIDIA/CUDA package)'"
  probe "apt-mark showhold"
  probe "for d in /sys/bus/pci/devices/*; do [ \"\$(cat \$d/vendor)\" = 0x10de ] && echo \"\${d##*/} \$(cat \$d/device) \$(cat \$d/class)\"; done; true"
  probe "ls /sys/firmware/efi/efivars 2>&1 | grep -c SecureBoot; mokutil --sb-state"
  probe "modinfo -k \$(uname -r) nvidia | grep -E '^(filename|version|license|signer):'"
  probe "grep -E '^(nvidia|nouveau)' /proc/modules | cut -d' ' -f1"
  probe "ls -l /usr/bin/nvidia-uninstall; ls /etc/apt/sources.list.d"
} > "$OUT/check_driver_probes.txt"

export LANG=C.UTF-8 LC_ALL=C.UTF-8 ANSIBLE_HOME=/tmp/gpufleet-ansible ANSIBLE_LOCAL_TEMP=/tmp/gpufleet-ansible/tmp \
  ANSIBLE_CONFIG=tests/realgpu/ansible.cfg ANSIBLE_FORCE_COLOR=0 ANSIBLE_INVENTORY_UNPARSED_WARNING=false

python3 -m ansible.cli.playbook -i localhost, tests/realgpu/check_driver.yml --check --diff \
  -e ansible_python_interpreter="$(command -v python3)" > "$OUT/check_driver.txt" 2>&1
rc=$?
echo "### ansible-playbook --check --diff exit code: $rc" >> "$OUT/check_driver.txt"
tail -4 "$OUT/check_driver.txt"
exit $rc
