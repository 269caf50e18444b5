for t in default 1x16x8 2x8x8 4x4x8 2x16x4 1x32x4; do
  if [ $t != default ]; then export FASTVMT_ATTN_FWD_TILE=$t; fi
  echo "tile $t"; ATTN_BENCH_REPS=20 ATTN_BENCH_MASKS=local1/7,local1/3,local2/10 ATTN_BENCH_DTYPES=bf16 .kbin/attention_bench | grep local | awk '{print "   ",$1,$3}'
done
