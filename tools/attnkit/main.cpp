// attnkit: run, compare and benchmark attention mechanisms from the command line.
// Every failure, the parser's included, ends with "attnkit: error: <argument>: <rule>" and
// exit code 2.
#include <CLI/CLI.hpp>
#include <iostream>

#include "attnkit/error.hpp"
#include "attnkit/version.hpp"
#include "tools/attnkit/commands.hpp"

namespace {

using namespace attnkit::cli;

void add_run_options(CLI::App* sub, Common& c) {
  sub->add_option("-t,--threads", c.threads, "worker threads (0: the CPUs this process may use)")
      ->check(CLI::Range(0, 1 << 20));
  sub->add_flag("--causal", c.causal, "causal masking (bottom-right aligned)");
  sub->add_option("--scale", c.scale, "logit scale (0: 1/sqrt(head_dim))");
  sub->add_option("-c,--config", c.configs,
                  "per-mechanism config, e.g. topk:k=64 (repeatable; `attnkit list` shows keys)");
  sub->add_option(
      "--simd", c.simd,
      "run on this compiled SIMD target (`attnkit list` names them; default: the best)");
  sub->add_option("--bf16-path", c.bf16_path,
                  "bfloat16 kernels' path: amx, avx512bf16, amx-emulated, fp32 (`attnkit list` "
                  "names those this CPU has; default: the best)");
  sub->add_option("--window", c.window,
                  "sliding window L[,R]: keys at most L before and R after each query (-1: "
                  "unbounded; with --causal, L alone is Mistral's)");
  sub->add_option("--softcap", c.softcap, "logit soft-cap (Gemma 2; 0: off)")
      ->check(CLI::Range(0.0, 1e30));
}

void add_format(CLI::App* sub, Common& c) {
  sub->add_option("-f,--format", c.format, "output: aligned table, CSV, or JSON with metadata")
      ->check(CLI::IsMember({"table", "csv", "json"}));
}

void add_shape(CLI::App* sub, Shape& s) {
  sub->add_option("-b,--batch", s.batch, "batch size")->check(CLI::Range(1, 1 << 20));
  sub->add_option("--heads", s.heads, "query heads")->check(CLI::Range(1, 4096));
  sub->add_option("--kv-heads", s.kv_heads, "key/value heads (0: = heads)")
      ->check(CLI::Range(0, 4096));
  sub->add_option("-d,--dim", s.dim, "head dim")->check(CLI::Range(1, 1024));
  sub->add_option("--memory-len", s.memory, "memory length for luna/memory")
      ->check(CLI::Range(1, 1 << 16));
}

CLI::App* add_run(CLI::App& app, Common& common, RunArgs& run) {
  CLI::App* cmd =
      app.add_subcommand("run", "run one mechanism on .npy q/k/v and write the output .npy");
  add_run_options(cmd, common);
  cmd->add_option("-m,--mechanism", run.mechanism, "mechanism name (see `attnkit list`)");
  cmd->add_option("--q", run.q, "queries .npy: [seq, dim], or rank 3/4 as --layout says")
      ->required();
  cmd->add_option("--k", run.k, "keys .npy (same layout)")->required();
  cmd->add_option("--v", run.v, "values .npy (same layout)")->required();
  cmd->add_option("-o,--out", run.out, "output .npy, written in the inputs' layout")->required();
  cmd->add_option("--layout", run.layout,
                  "rank-3/4 files: bshd = [seq, heads, dim] / [batch, seq, heads, dim], "
                  "bhsd = [heads, seq, dim] / [batch, heads, seq, dim]")
      ->check(CLI::IsMember({"bshd", "bhsd"}));
  cmd->add_option("--memory", run.memory, "memory .npy (luna, memory)");
  cmd->add_option("--memory-out", run.memory_out, "write the packed/final memory .npy");
  cmd->add_option("--gate", run.gate, "gate logits .npy [batch, seq, kv_heads] (linear gated=1)");
  cmd->add_option("--key-lengths", run.key_lengths,
                  "valid keys per batch, comma-separated (0 = all keys are padding)");
  return cmd;
}

CLI::App* add_compare(CLI::App& app, Common& common, CompareArgs& cmp) {
  CLI::App* cmd =
      app.add_subcommand("compare", "every mechanism against exact softmax on one shape");
  add_run_options(cmd, common);
  add_format(cmd, common);
  add_shape(cmd, cmp.shape);
  cmd->add_option("-n,--seq", cmp.shape.seq, "query length")->check(CLI::Range(1, 1 << 24));
  cmd->add_option("--kv-seq", cmp.shape.kv_seq, "key length (0: = seq)")
      ->check(CLI::Range(0, 1 << 24));
  cmd->add_option("-m,--mechanisms", cmp.mechanisms, "mechanisms, comma-separated (default: all)")
      ->delimiter(',');
  cmd->add_option("--reps", cmp.reps, "timed runs (median reported)")->check(CLI::Range(1, 1000));
  cmd->add_option("--warmup", cmp.warmup, "untimed runs first")->check(CLI::Range(0, 1000));
  cmd->add_option("--seed", cmp.seed, "input seed");
  return cmd;
}

CLI::App* add_bench(CLI::App& app, Common& common, BenchArgs& bench) {
  CLI::App* cmd =
      app.add_subcommand("bench", "time mechanisms over sequence lengths (one row each)");
  add_run_options(cmd, common);
  add_format(cmd, common);
  add_shape(cmd, bench.shape);
  cmd->add_option("-m,--mechanisms", bench.mechanisms, "mechanisms, comma-separated")
      ->delimiter(',');
  cmd->add_option("-n,--seq", bench.seqs, "sequence lengths, comma-separated");
  cmd->add_option("--reps", bench.reps, "timed runs (median reported)")
      ->check(CLI::Range(1, 10000));
  cmd->add_option("--warmup", bench.warmup, "untimed runs first")->check(CLI::Range(0, 1000));
  cmd->add_option("--dtype", bench.dtype,
                  "q, k, v, out (and dout, gradients) dtype; bfloat16 runs the bfloat16 kernels "
                  "where a mechanism has them, other mechanisms and float16 on float32 copies")
      ->check(CLI::IsMember({"float32", "bfloat16", "float16"}));
  cmd->add_flag_callback(
      "--bf16", [&bench] { bench.dtype = "bfloat16"; }, "--dtype bfloat16");
  cmd->add_flag("--backward", bench.backward,
                "time the backward pass (dq, dk, dv; dmemory for luna/memory)");
  cmd->add_flag("--decode", bench.decode,
                "time one streaming step (append + query one token) after --seq context tokens");
  return cmd;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"attnkit " + std::string(attnkit::kVersion) +
               ": efficient attention mechanisms (run, compare, bench, list)"};
  app.option_defaults()->always_capture_default();  // --help shows every default
  app.set_version_flag("--version", std::string("attnkit ") + attnkit::kVersion);
  app.require_subcommand(1);
  Common common;
  RunArgs run;
  CompareArgs cmp;
  BenchArgs bench;
  CLI::App* run_cmd = add_run(app, common, run);
  CLI::App* cmp_cmd = add_compare(app, common, cmp);
  CLI::App* bench_cmd = add_bench(app, common, bench);
  CLI::App* list_cmd = app.add_subcommand("list", "mechanisms, what each supports, config keys");
  add_format(list_cmd, common);
  try {
    app.parse(argc, argv);
  } catch (const CLI::Success& e) {  // --help, --version
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::cerr << "attnkit: error: " << e.what() << " (see attnkit --help)\n";
    return 2;
  }
  try {
    if (!common.simd.empty()) attnkit::Context::set_simd_target(common.simd);
    if (!common.bf16_path.empty()) attnkit::Context::set_bf16_path(common.bf16_path);
    if (run_cmd->parsed()) return cmd_run(common, run);
    if (cmp_cmd->parsed()) return cmd_compare(common, cmp);
    if (bench_cmd->parsed()) return cmd_bench(common, bench);
    if (list_cmd->parsed()) return cmd_list(common);
  } catch (const attnkit::Error& e) {
    std::cerr << "attnkit: error: " << e.what() << "\n";
    return 2;
  } catch (const std::bad_alloc& e) {
    std::cerr << "attnkit: error: out of memory: " << e.what() << "\n";
    return 2;
  }
  return 1;
}
