/* The measurement behind ATTN_KVCACHE_DEFAULT_GROUP (bench/README.md, "KV cache
 * storages"): decode error and cache bytes of int8/int4 caches for group sizes
 * 16..128 at L=4096, d=128, H=8, on N(0,1) data and with K channels x ≡ 5
 * (mod 32) 20x larger. Not part of the build:
 *   cc -O2 -Iinclude -Ibuild/include bench/sweeps/kv_group_sweep.c -Lbuild -lattn \
 *      -Wl,-rpath,$PWD/build -lm -o /tmp/kv_group_sweep && /tmp/kv_group_sweep */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "attn/attn.h"
static double now(void){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+1e-9*t.tv_nsec;}
static unsigned long long st=88172645463325252ULL;
static double U(void){st^=st<<13;st^=st>>7;st^=st<<17;return (st>>11)*(1.0/9007199254740992.0);}
static double N(void){return sqrt(-2*log(U()+1e-300))*cos(6.283185307*U());}
int main(void){
  const int64_t L=4096,D=128,H=8;
  attn_context*ctx; attn_context_options co; attn_context_options_init(&co); co.num_threads=1; attn_context_create(&co,&ctx);
  for(int outl=0;outl<2;outl++){
  float*k=malloc(L*D*H*4),*v=malloc(L*D*H*4),*q=malloc(D*H*4);
  for(int64_t i=0;i<L*D*H;i++){k[i]=(float)(N()*((outl&&i%32==5)?20:1));v[i]=(float)N();}
  for(int64_t i=0;i<D*H;i++)q[i]=(float)N();
  /* exact f64 */
  double ref[8*128]; double vmax=0; for(int64_t i=0;i<L*D*H;i++) vmax=fmax(vmax,fabs(v[i]));
  for(int h=0;h<H;h++){double*s=malloc(L*8),m=-1e300,sum=0;for(int64_t j=0;j<L;j++){double d=0;for(int x=0;x<D;x++)d+=(double)q[h*D+x]*k[(h*L+j)*D+x];s[j]=d/sqrt(D);m=fmax(m,s[j]);}
    for(int64_t j=0;j<L;j++){s[j]=exp(s[j]-m);sum+=s[j];}
    for(int x=0;x<D;x++){double o=0;for(int64_t j=0;j<L;j++)o+=s[j]*v[(h*L+j)*D+x];ref[h*D+x]=o/sum;} free(s);}
  int64_t ks[4]={1,H,L,D},qs[4]={1,H,1,D};
  attn_tensor*kt,*vt,*qt,*ot; attn_tensor_wrap(ctx,ATTN_DTYPE_F32,4,ks,NULL,k,&kt); attn_tensor_wrap(ctx,ATTN_DTYPE_F32,4,ks,NULL,v,&vt);
  attn_tensor_wrap(ctx,ATTN_DTYPE_F32,4,qs,NULL,q,&qt); attn_tensor_create(ctx,ATTN_DTYPE_F32,4,qs,&ot);
  for(int s=3;s<=4;s++) for(int64_t G=16;G<=128;G*=2){
    attn_kvcache_config c; attn_kvcache_config_init(&c); c.heads_kv=H;c.capacity=L;c.d_k=D;c.storage=(attn_kvcache_storage)s;c.group_size=G;
    attn_kvcache*cache; attn_kvcache_create(ctx,&c,&cache); attn_kvcache_append(cache,kt,vt,NULL);
    attn_desc*d; attn_desc_create(ctx,&d); attn_desc_set_causal(d,ATTN_CAUSAL_BOTTOM_RIGHT);
    attn_kvcache_plan*p; attn_kvcache_plan_create(cache,d,qt,ot,NULL,&p);
    attn_kvcache_plan_execute(p,qt,ot,NULL,NULL);
    double t0=now(); for(int r=0;r<20;r++) attn_kvcache_plan_execute(p,qt,ot,NULL,NULL); double ms=(now()-t0)/20*1e3;
    float*o=attn_tensor_data(ot); double me=0,mean=0; for(int i=0;i<H*D;i++){double e=fabs(o[i]-ref[i])/vmax;me=fmax(me,e);mean+=e/(H*D);}
    attn_kvcache_raw raw; attn_kvcache_raw_init(&raw); attn_kvcache_view_raw(cache,&raw);
    printf("%s %s G=%3lld max_err %.3e mean_err %.3e bytes/f32 %.4f ms %.3f\n",outl?"outlier":"N(0,1) ",s==3?"int8":"int4",(long long)G,me,mean,(double)raw.total_bytes/(L*D*H*8.0),ms);
    attn_kvcache_plan_destroy(p);attn_desc_destroy(d);attn_kvcache_destroy(cache);}
  }
  return 0;}
