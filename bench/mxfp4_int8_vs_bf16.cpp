// Design experiment behind the AVX-512 MXFP4 GEMM (csrc/kernels/isa/mxfp4.cpp): the same tile loop
// with weights decoded to BF16 and vdpbf16ps, against weights decoded to int8 and vpdpbusd on
// activations quantized to int8 per block of 32 (each block's int32 sum converted and scaled per row).
// Weights stay in cache (N = 256, K = 1536), so this compares compute per block, and the error of
// each against a float64 reference. Standalone, not part of the module:
//     g++ -O3 -march=native -std=c++17 -w bench/mxfp4_int8_vs_bf16.cpp -o /tmp/int8_vs_bf16 && /tmp/int8_vs_bf16
// It prints, per M, the time per block and relative error of each; BF16 was kept for being faster and
// more exact on these blocks (the figures measured are in docs/benchmarks.md).
#include <immintrin.h>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <cmath>
#include <vector>
#include <random>
#include <time.h>

static float half_scale(uint8_t b){ uint32_t bits = b < 2 ? 0x00200000u << b : uint32_t(b - 1) << 23; float f; memcpy(&f,&bits,4); return f; }
static const float kv[16] = {0,1,2,3,4,6,8,12,0,-1,-2,-3,-4,-6,-8,-12};
alignas(64) static uint16_t tbl[256][32];
static uint16_t f2bf(float f){ uint32_t b; memcpy(&b,&f,4); return uint16_t((b + 0x7fff + ((b>>16)&1))>>16); }

static inline __m512i decode_bf16(const uint8_t* block) {
    const __m256i t = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i*)(block + 1)));
    const __m256i n = _mm256_mask_srli_epi16(t, 0xFF00, t, 4);
    return _mm512_permutexvar_epi16(_mm512_cvtepu8_epi16(n), _mm512_load_si512(tbl[block[0]]));
}
static inline float hsum(__m512 v){ return _mm512_reduce_add_ps(v); }

template <int R, int MT>
void tile_bf16(const uint16_t* x, int64_t K, const uint8_t* w, int64_t rb, float* y, int64_t ldy) {
    __m512 s[R][MT];
    for (int r=0;r<R;++r) for(int m=0;m<MT;++m) s[r][m]=_mm512_setzero_ps();
    for (int64_t b=0;b<K/32;++b){
        __m512i wv[R];
#pragma GCC unroll 8
        for(int r=0;r<R;++r) wv[r]=decode_bf16(w+r*rb+b*17);
#pragma GCC unroll 8
        for(int m=0;m<MT;++m){ __m512i xv=_mm512_loadu_si512(x+m*K+b*32);
#pragma GCC unroll 8
            for(int r=0;r<R;++r) s[r][m]=_mm512_dpbf16_ps(s[r][m],(__m512bh)wv[r],(__m512bh)xv);}
    }
    for (int r=0;r<R;++r) for(int m=0;m<MT;++m) y[m*ldy+r]=hsum(s[r][m]);
}

// int8: x quantized per (m, block) to int8 (+128 as u8), scale vectors per (m, block pair).
template <int R, int MT>
void tile_int8(const uint8_t* xu, const float* dxv, int64_t K, const uint8_t* w, int64_t rb, float* y, int64_t ldy) {
    const __m512i lut = _mm512_broadcast_i32x4(_mm_setr_epi8(0,1,2,3,4,6,8,12,0,-1,-2,-3,-4,-6,-8,-12));
    const __m256i low4 = _mm256_set1_epi8(0x0F);
    const __m512i u128 = _mm512_set1_epi8((char)0x80);
    __m512 s[R][MT];
    for (int r=0;r<R;++r) for(int m=0;m<MT;++m) s[r][m]=_mm512_setzero_ps();
    const int64_t pairs = K/64;
    for (int64_t p=0;p<pairs;++p){
        __m512i wv[R], neg[R]; __m512 dw[R];
#pragma GCC unroll 8
        for(int r=0;r<R;++r){
            const uint8_t* A = w + r*rb + 2*p*17; const uint8_t* B = A + 17;
            const __m256i ab = _mm256_set_m128i(_mm_loadu_si128((const __m128i*)(B+1)), _mm_loadu_si128((const __m128i*)(A+1)));
            const __m256i lo = _mm256_and_si256(ab, low4), hi = _mm256_and_si256(_mm256_srli_epi16(ab,4), low4);
            const __m512i idx = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_permute2x128_si256(lo,hi,0x20)), _mm256_permute2x128_si256(lo,hi,0x31), 1);
            wv[r] = _mm512_shuffle_epi8(lut, idx);
            neg[r] = _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_dpbusd_epi32(_mm512_setzero_si512(), u128, wv[r]));
            dw[r] = _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(half_scale(A[0])), _mm512_set1_ps(half_scale(B[0])));
        }
#pragma GCC unroll 8
        for(int m=0;m<MT;++m){
            const __m512i xv=_mm512_loadu_si512(xu+m*K+p*64);
            const __m512 dx=_mm512_loadu_ps(dxv+(m*pairs+p)*16);
#pragma GCC unroll 8
            for(int r=0;r<R;++r){
                const __m512 f=_mm512_cvtepi32_ps(_mm512_dpbusd_epi32(neg[r], xv, wv[r]));
                s[r][m]=_mm512_fmadd_ps(f,_mm512_mul_ps(dx,dw[r]),s[r][m]);
            }
        }
    }
    for (int r=0;r<R;++r) for(int m=0;m<MT;++m) y[m*ldy+r]=hsum(s[r][m]);
}

static double now(){ timespec t; clock_gettime(CLOCK_THREAD_CPUTIME_ID,&t); return t.tv_sec+1e-9*t.tv_nsec; }

template <int R, int MT> double run_bf16(const uint16_t* x, int64_t K, const uint8_t* w, int64_t N, float* y){
    const int64_t rb=K/32*17; double t=now();
    for(int64_t n=0;n<N;n+=R) tile_bf16<R,MT>(x,K,w+n*rb,rb,y+n,N);
    return now()-t;
}
template <int R, int MT> double run_int8(const uint8_t* xu,const float* dxv, int64_t K, const uint8_t* w, int64_t N, float* y){
    const int64_t rb=K/32*17; double t=now();
    for(int64_t n=0;n<N;n+=R) tile_int8<R,MT>(xu,dxv,K,w+n*rb,rb,y+n,N);
    return now()-t;
}

int main(){
    for(int b=0;b<256;++b) for(int i=0;i<32;++i) tbl[b][i]=f2bf(kv[i&15]*half_scale(b));
    const int64_t N=256, K=1536, rb=K/32*17;
    std::mt19937 g(1); std::vector<uint8_t> w(N*rb); for(auto& v:w) v=g()&255;
    for(int64_t i=0;i<N*K/32;++i) w[i*17]=120+(g()%10);
    const int M=6;
    std::vector<float> x(M*K); std::normal_distribution<float> nd; for(auto& v:x) v=nd(g);
    std::vector<uint16_t> xb(M*K); for(int i=0;i<M*K;++i) xb[i]=f2bf(x[i]);
    std::vector<uint8_t> xu(M*K); std::vector<float> dxv(M*(K/64)*16);
    for(int m=0;m<M;++m) for(int64_t b=0;b<K/32;++b){ float a=0; for(int j=0;j<32;++j) a=std::max(a,std::fabs(x[m*K+b*32+j])); float d=a/127; 
        for(int j=0;j<32;++j) xu[m*K+b*32+j]=uint8_t(int(std::nearbyint(x[m*K+b*32+j]/d))+128);
        for(int l=0;l<8;++l) dxv[(m*(K/64)+b/2)*16+(b%2)*8+l]=d; }
    std::vector<float> y1(M*N), y2(M*N);
    // accuracy check at MT = 6 against double reference
    run_bf16<4,6>(xb.data(),K,w.data(),N,y1.data()); run_int8<4,6>(xu.data(),dxv.data(),K,w.data(),N,y2.data());
    double e1=0,e2=0,nr=0;
    for(int m=0;m<M;++m) for(int n=0;n<N;++n){ double r=0; for(int64_t k=0;k<K;++k){ const uint8_t* blk=&w[n*rb+(k/32)*17]; int j=k%32; int c= j<16? blk[1+j]&15 : blk[1+j-16]>>4; r+= double(x[m*K+k])*kv[c]*half_scale(blk[0]); }
        e1+=(y1[m*N+n]-r)*(y1[m*N+n]-r); e2+=(y2[m*N+n]-r)*(y2[m*N+n]-r); nr+=r*r; }
    printf("relative rms error: bf16 activations %.2e, int8 activations %.2e\n", std::sqrt(e1/nr), std::sqrt(e2/nr));
    const int reps=400; double tb[7]={}, ti[7]={};
    for(int rep=0;rep<5;++rep){
        double a;
        a=0; for(int i=0;i<reps;++i) a+=run_bf16<8,1>(xb.data(),K,w.data(),N,y1.data()); tb[1]= rep? std::min(tb[1],a):a;
        a=0; for(int i=0;i<reps;++i) a+=run_int8<8,1>(xu.data(),dxv.data(),K,w.data(),N,y2.data()); ti[1]= rep? std::min(ti[1],a):a;
        a=0; for(int i=0;i<reps;++i) a+=run_bf16<4,4>(xb.data(),K,w.data(),N,y1.data()); tb[4]= rep? std::min(tb[4],a):a;
        a=0; for(int i=0;i<reps;++i) a+=run_int8<4,4>(xu.data(),dxv.data(),K,w.data(),N,y2.data()); ti[4]= rep? std::min(ti[4],a):a;
        a=0; for(int i=0;i<reps;++i) a+=run_bf16<4,6>(xb.data(),K,w.data(),N,y1.data()); tb[6]= rep? std::min(tb[6],a):a;
        a=0; for(int i=0;i<reps;++i) a+=run_int8<4,6>(xu.data(),dxv.data(),K,w.data(),N,y2.data()); ti[6]= rep? std::min(ti[6],a):a;
    }
    const double blocks = double(N)*K/32*reps;
    for(int mt: {1,4,6}) printf("M=%d (in cache): bf16 %.2f ns/block-row, int8 %.2f ns/block-row  (int8/bf16 time %.2f)\n", mt, tb[mt]/blocks*1e9, ti[mt]/blocks*1e9, ti[mt]/tb[mt]);
}
