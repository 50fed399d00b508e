// The two instantiations of the reference model: float trains, double checks gradients.
#include "model/model_ref.h"

namespace pg {

template class RefModel<float>;
template class RefModel<double>;

}  // namespace pg
