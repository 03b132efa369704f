"""--dry_run --topology: the real train step compiled for a TPU slice on this CPU machine, with libtpu
(requirements-tpu.txt) and no TPU; and the HLO reading behind its report."""

import json

import pytest

from bigjax import topology
from bigjax.config import ConfigError
from helpers import run_main

TINY_LM = ('--config=experiments/lm_gpt.py:tiny', '--dry_run', '--config.mesh.data=1', '--config.mesh.fsdp=4')


def _report(data_dir, *flags):
  result = run_main(*TINY_LM, f'--config.data.data_dir={data_dir}', *flags)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'TPU_WORKER_HOSTNAMES' not in result.stderr  # libtpu kept quiet off a TPU VM
  return json.loads(result.stdout.splitlines()[-1])  # after TFDS's lines if it prepared the data


def test_the_lm_compiles_for_a_v5e_slice_with_splash_attention(data_dir):
  report = _report(data_dir, '--topology=v5e:2x2')
  assert report['topology'] == 'v5e:2x2' and report['device_kind'] == 'TPU v5 lite'
  assert report['devices'] == 4 and report['mesh'] == {'data': 1, 'fsdp': 4, 'tensor': 1}
  assert report['hbm_bytes'] == 16 * 2**30 and report['fits'] is True
  assert 0 < report['per_device_bytes']['total'] < report['hbm_bytes']
  # fsdp: every weight is gathered before use, so the step has all-gathers (maybe as permutes).
  gathers = sum(report['collectives'].get(kind, {}).get('bytes', 0)
                for kind in ('all-gather', 'collective-permute'))
  assert gathers > report['per_device_bytes']['params']
  assert report['mosaic_kernels'] >= 3  # splash attention's forward and two backward kernels
  assert report['step_s_at_least'] == max(report['roofline_s'].values()) > 0
  assert 0 < report['mfu_at_most'] <= 1


@pytest.mark.slow  # 30-50 s: three TPU compiles (the step, then grad_accum 2 that fits)
def test_a_step_that_does_not_fit_is_a_result_not_an_error(data_dir):
  """And the report says which train.grad_accum would make it fit, with that step's figures."""
  report = _report(data_dir, '--topology=v5e:2x2', '--config.train.batch_size=16384')
  assert report['fits'] is False
  assert report['per_device_bytes']['temp'] > report['hbm_bytes'] > report['usable_hbm_bytes'] > 15 * 2**30
  assert report['per_device_bytes']['params'] * 4 >= report['params'] > 1_000_000  # fsdp over 4
  fits_with = report['fits_with']
  assert fits_with['train.grad_accum'] == 2 and fits_with['fits'] is True
  assert fits_with['per_device_bytes']['total'] <= report['hbm_bytes'] < report['per_device_bytes']['temp']
  assert fits_with['collectives'] and fits_with['mfu_at_most'] > 0


def test_an_unknown_topology_is_a_one_line_error(data_dir):
  result = run_main(*TINY_LM, f'--config.data.data_dir={data_dir}', '--topology=v9:4x4')
  assert result.returncode == 2
  assert result.stderr.strip().count('\n') == 0 and 'is not a TPU slice' in result.stderr, result.stderr


@pytest.mark.parametrize('name', ['v9:4x4', 'v5e:4x4x4', 'v5p:4x4', 'v5e:fourxfour', 'v4:0x2x2', 'v5e'])
def test_names_that_are_not_slices_are_refused(name):
  with pytest.raises(ConfigError, match='is not a TPU slice'):
    topology.parse(name)


def test_topology_without_dry_run_is_refused(data_dir):
  result = run_main('--config=experiments/lm_gpt.py:tiny', f'--config.data.data_dir={data_dir}',
                    '--topology=v5e:2x2')
  assert result.returncode == 2 and 'add --dry_run' in result.stderr


def test_slice_names_parse_to_chips_and_bounds():
  chip, bounds = topology.parse('v5p:2x2x4')
  assert bounds == (2, 2, 4) and chip.libtpu == 'v5' and chip.megacore and chip.hbm_bytes == 95 * 2**30
  assert topology.parse('v6e:8x8')[1] == (8, 8)


HLO = '''
%cond (p: (s32[], f32[8])) -> pred[] {
  %constant.1 = s32[] constant(24)
  %gte = s32[] get-tuple-element(%p), index=0
  ROOT %lt = pred[] compare(%gte, %constant.1), direction=LT
}

%body (p: (s32[], f32[8])) -> (s32[], f32[8]) {
  %all-gather.1 = bf16[16,128]{1,0} all-gather(%x), dimensions={0}
  %ar-start = f32[8]{0} all-reduce-start(%y), to_apply=%add
  %ar-done = f32[8]{0} all-reduce-done(%ar-start)
}

ENTRY %main (a: f32[8]) -> f32[8] {
  %while.1 = (s32[], f32[8]) while(%t), condition=%cond, body=%body
  %reduce-scatter.2 = f32[2,4]{1,0} reduce-scatter(%a), dimensions={0}
}
'''


def test_collectives_count_a_loop_body_as_often_as_it_runs():
  found = topology.collectives(HLO)
  assert found['all-gather'] == {'count': 24, 'bytes': 24 * 16 * 128 * 2}
  assert found['all-reduce'] == {'count': 24, 'bytes': 24 * 8 * 4}  # an async pair counts once
  assert found['reduce-scatter'] == {'count': 1, 'bytes': 2 * 4 * 4}


def test_the_tpu_compilers_out_of_memory_error_reads_as_bytes():
  message = ('RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO temporaries '
             '(38.15G) exceeds available HBM (15.75G).')
  assert topology.out_of_memory(message) == (int(38.15 * 2**30), int(15.75 * 2**30))
  assert topology.out_of_memory('INVALID_ARGUMENT: something else') is None
