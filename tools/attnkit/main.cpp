// attnkit: run, compare and benchmark attention mechanisms from the command line.
#include <CLI/CLI.hpp>
#include <iostream>

#include "attnkit/error.hpp"
#include "tools/attnkit/commands.hpp"

int main(int argc, char** argv) {
  using namespace attnkit::cli;
  CLI::App app{"attnkit: efficient attention mechanisms (run, compare, bench, list)"};
  app.require_subcommand(1);
  Common common;
  auto add_common = [&](CLI::App* sub) {
    sub->add_option("-t,--threads", common.threads, "worker threads (0: all cores)")
        ->check(CLI::Range(0, 1024));
    sub->add_flag("--causal", common.causal, "causal masking (bottom-right aligned)");
    sub->add_option("--scale", common.scale, "logit scale (0: 1/sqrt(head_dim))");
    sub->add_option("-c,--config", common.configs,
                    "per-mechanism config, e.g. topk:k=64 (repeatable)");
    sub->add_option("-f,--format", common.format, "output format")
        ->check(CLI::IsMember({"table", "csv", "json"}));
  };
  auto add_shape = [](CLI::App* sub, Shape& s) {
    sub->add_option("-b,--batch", s.batch, "batch size")->check(CLI::Range(1, 1 << 20));
    sub->add_option("--heads", s.heads, "query heads")->check(CLI::Range(1, 4096));
    sub->add_option("--kv-heads", s.kv_heads, "key/value heads (0: = heads)")
        ->check(CLI::Range(0, 4096));
    sub->add_option("-d,--dim", s.dim, "head dim")->check(CLI::Range(1, 1024));
    sub->add_option("--memory-len", s.memory, "memory length for luna/memory")
        ->check(CLI::Range(1, 1 << 16));
  };

  RunArgs run;
  CLI::App* run_cmd =
      app.add_subcommand("run", "run one mechanism on .npy q/k/v and write the output .npy");
  add_common(run_cmd);
  run_cmd->add_option("-m,--mechanism", run.mechanism, "mechanism name (see `attnkit list`)");
  run_cmd
      ->add_option("--q", run.q,
                   "queries .npy: [seq, dim], [seq, heads, dim] or [batch, seq, heads, dim]")
      ->required();
  run_cmd->add_option("--k", run.k, "keys .npy")->required();
  run_cmd->add_option("--v", run.v, "values .npy")->required();
  run_cmd->add_option("-o,--out", run.out, "output .npy")->required();
  run_cmd->add_option("--memory", run.memory, "memory .npy (luna, memory)");
  run_cmd->add_option("--memory-out", run.memory_out, "write the packed/final memory .npy");
  run_cmd->add_option("--gate", run.gate,
                      "gate logits .npy [batch, seq, kv_heads] (linear gated=1)");
  run_cmd->add_option("--key-lengths", run.key_lengths, "valid keys per batch, comma-separated");

  CompareArgs cmp;
  CLI::App* cmp_cmd =
      app.add_subcommand("compare", "every mechanism against exact softmax on one shape");
  add_common(cmp_cmd);
  add_shape(cmp_cmd, cmp.shape);
  cmp.shape.seq = 1024;
  cmp_cmd->add_option("-n,--seq", cmp.shape.seq, "query length")->check(CLI::Range(1, 1 << 24));
  cmp_cmd->add_option("--kv-seq", cmp.shape.kv_seq, "key length (0: = seq)")
      ->check(CLI::Range(0, 1 << 24));
  cmp_cmd->add_option("-m,--mechanisms", cmp.mechanisms, "mechanisms to run (default: all)")
      ->delimiter(',');
  cmp_cmd->add_option("--reps", cmp.reps, "timed runs (median reported)")
      ->check(CLI::Range(1, 1000));
  cmp_cmd->add_option("--warmup", cmp.warmup, "untimed runs first")->check(CLI::Range(0, 1000));
  cmp_cmd->add_option("--seed", cmp.seed, "input seed");

  BenchArgs bench;
  CLI::App* bench_cmd = app.add_subcommand("bench", "time one mechanism over sequence lengths");
  add_common(bench_cmd);
  add_shape(bench_cmd, bench.shape);
  bench_cmd->add_option("-m,--mechanism", bench.mechanism, "mechanism name");
  bench_cmd->add_option("-n,--seq", bench.seqs, "sequence lengths, comma-separated");
  bench_cmd->add_option("--reps", bench.reps, "timed runs (median reported)")
      ->check(CLI::Range(1, 10000));
  bench_cmd->add_option("--warmup", bench.warmup, "untimed runs first")->check(CLI::Range(0, 1000));
  bench_cmd->add_flag("--bf16", bench.bf16, "bfloat16 q, k, v (softmax, linear; widened on load)");
  bench_cmd->add_flag("--backward", bench.backward,
                      "time the backward pass (dq, dk, dv; dmemory for luna/memory)");
  bench_cmd->add_flag(
      "--decode", bench.decode,
      "time one streaming step (append + query one token) after --seq context tokens");

  CLI::App* list_cmd = app.add_subcommand("list", "registered mechanisms and what each supports");
  add_common(list_cmd);

  CLI11_PARSE(app, argc, argv);
  try {
    if (run_cmd->parsed()) return cmd_run(common, run);
    if (cmp_cmd->parsed()) return cmd_compare(common, cmp);
    if (bench_cmd->parsed()) return cmd_bench(common, bench);
    if (list_cmd->parsed()) return cmd_list(common);
  } catch (const attnkit::Error& e) {
    std::cerr << "attnkit: error: " << e.what() << "\n";
    return 2;
  } catch (const std::bad_alloc&) {
    std::cerr << "attnkit: error: out of memory for this shape\n";
    return 2;
  }
  return 1;
}
