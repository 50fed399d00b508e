# pgolf: one binary (build/pgolf) and one test binary (build/pgolf_tests).
# Host code is built by g++, CUDA code by nvcc for Hopper (sm_90a) and Ampere (sm_80).
NVCC ?= /usr/local/cuda/bin/nvcc
CXX ?= g++
BUILD := build
CUDA_HOME ?= /usr/local/cuda
CUDA_ARCH ?= -gencode=arch=compute_90a,code=sm_90a -gencode=arch=compute_80,code=sm_80
HOST_FLAGS := -O3 -march=x86-64-v3 -fopenmp
CXXFLAGS := -std=c++17 $(HOST_FLAGS) -Wall -Wextra -I. -I$(CUDA_HOME)/include -MMD -MP
NVCCFLAGS := -std=c++17 -O3 $(CUDA_ARCH) -I. --expt-relaxed-constexpr -Xcompiler "$(HOST_FLAGS) -Wall" -MMD -MP
# libsentencepiece and libsentencepiece_train are copied next to the binary (rpath $ORIGIN/lib): the GPU
# machines have another libsentencepiece that does not match this machine's libsentencepiece_train.
LDFLAGS := -L$(CUDA_HOME)/lib64 -Xlinker -rpath,'$$ORIGIN/lib'
LDLIBS := -lcublasLt -lcublas -lnccl -lsentencepiece_train -lsentencepiece -llzma -lz -lgomp -lpthread
MAKEFLAGS += -j$(shell nproc)

MODULES := common model train dist quant eval tokenizer pipeline
LIB_CPP := $(foreach m,$(MODULES),$(wildcard $(m)/*.cpp))
LIB_CU := $(foreach m,$(MODULES),$(wildcard $(m)/*.cu))
LIB_OBJ := $(LIB_CPP:%.cpp=$(BUILD)/%.o) $(LIB_CU:%.cu=$(BUILD)/%.cu.o)
TEST_OBJ := $(patsubst %.cpp,$(BUILD)/%.o,$(wildcard tests/*.cpp)) $(patsubst %.cu,$(BUILD)/%.cu.o,$(wildcard tests/*.cu))
# Code bytes of an artifact: the sources that build the binary (tests excluded), tarred and xz -9e compressed.
CODE_FILES = $(sort Makefile train.cu $(foreach m,$(MODULES),$(wildcard $(m)/*.cpp $(m)/*.cu $(m)/*.h $(m)/*.cuh)))
SP_COPIES := $(BUILD)/lib/libsentencepiece.so.0 $(BUILD)/lib/libsentencepiece_train.so.0

.PHONY: all test deps clean
all: $(BUILD)/pgolf $(BUILD)/code.tar.xz

deps:
	@if dpkg -s libsentencepiece-dev libcli11-dev doctest-dev liblzma-dev zlib1g-dev xz-utils >/dev/null 2>&1; then \
	  echo "deps: all Debian packages present"; \
	else \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && $$SUDO apt-get install -y -q libsentencepiece-dev libcli11-dev doctest-dev liblzma-dev zlib1g-dev xz-utils; \
	fi

$(BUILD)/lib/%.so.0: /usr/lib/x86_64-linux-gnu/%.so.0
	@mkdir -p $(dir $@)
	cp -L $< $@

$(BUILD)/pgolf: $(BUILD)/train.cu.o $(LIB_OBJ) $(SP_COPIES)
	$(NVCC) $(CUDA_ARCH) -o $@ $(BUILD)/train.cu.o $(LIB_OBJ) $(LDFLAGS) $(LDLIBS)

$(BUILD)/pgolf_tests: $(BUILD)/train_nomain.cu.o $(LIB_OBJ) $(TEST_OBJ) $(SP_COPIES)
	$(NVCC) $(CUDA_ARCH) -o $@ $(BUILD)/train_nomain.cu.o $(LIB_OBJ) $(TEST_OBJ) $(LDFLAGS) $(LDLIBS)

$(BUILD)/code.tar.xz: $(CODE_FILES)
	@mkdir -p $(BUILD)
	tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -cf - $(CODE_FILES) | xz -9e -T1 > $@.tmp && mv $@.tmp $@

$(BUILD)/%.o: %.cpp
	@mkdir -p $(dir $@)
	$(CXX) $(CXXFLAGS) -c $< -o $@

$(BUILD)/%.cu.o: %.cu
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -c $< -o $@

$(BUILD)/train_nomain.cu.o: train.cu
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -DPGOLF_NO_MAIN -c $< -o $@

# Tests run from the repo root (they read data/sample); GPU tests skip with a message when no GPU is visible.
test: $(BUILD)/pgolf_tests $(BUILD)/pgolf $(BUILD)/code.tar.xz
	$(BUILD)/pgolf_tests

clean:
	rm -rf $(BUILD)

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
